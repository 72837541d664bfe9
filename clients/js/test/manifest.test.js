import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BundleError, Captioner, ImageError } from '../src/node.js';
import { decodeImageBytes } from '../src/image-node.js';
import { DEFAULT_LIMITS } from '../src/errors.js';
import { checkManifest, parseManifest } from '../src/manifest.js';

const sha = (text) => createHash('sha256').update(text).digest('hex');
const manifest = (over = {}) => ({
  format_version: 1,
  vocab: ['<pad>', '<start>', '<end>', '<unk>', 'a', 'dog'],
  special_tokens: { pad: 0, start: 1, end: 2, unk: 3 },
  max_length: 10,
  preprocess: { resize: 32, crop: 32, mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2], interpolation: 'bilinear' },
  graphs: {
    encoder: { file: 'encoder.onnx', sha256: sha('enc'), image_input: 'image', state_outputs: ['h'] },
    decoder_step: { file: 'decoder_step.onnx', sha256: sha('dec'), token_input: 'token', state_inputs: ['h'], logits_output: 'logits', state_outputs: ['h_next'] },
  },
  ...over,
});

test('the manifest schema refuses what runtime/bundle.py refuses, in one line', () => {
  const cases = [
    [{ format_version: 2 }, 'format_version: must be the integer 1 (the version this capkit reads), got 2'],
    [{ format_version: '1' }, 'format_version: must be the integer 1 (the version this capkit reads), got "1"'],
    [{ format_version: true }, 'format_version: must be the integer 1 (the version this capkit reads), got true'],
    [{ max_length: 0 }, 'max_length: must be an integer >= 1, got 0'],
    [{ vocab: ['<pad>', '<start>', '<end>', '<unk>', 'a', 'a'] }, 'vocab[5]: "a" repeats vocab[4]; words must be distinct'],
    [{ preprocess: { resize: 32, crop: 32, mean: [0, 0, 0], std: [0.2, 0, 0.2] } }, 'preprocess.std: must be 3 finite numbers > 0, got [0.2,0,0.2]'],
    [{ preprocess: { resize: 32, crop: 32, mean: [0, 0, 0], std: [1, 1, 1], gamma: 2 } }, 'preprocess: unknown key "gamma"'],
    [{ decoding: { beam: 2, temperature: 1 } }, 'decoding: beam search is deterministic'],
    [{ decoding: { greedy: true } }, 'decoding: unknown option "greedy"'],
    [{ precision: 'fp8' }, 'precision: must be one of fp32, fp16, int8, got "fp8"'],
  ];
  for (const [over, message] of cases) {
    assert.throws(() => checkManifest(manifest(over)), (e) => e instanceof BundleError && e.message.startsWith(message), message);
  }
  const bad = manifest();
  bad.graphs.encoder.file = '../encoder.onnx';
  assert.throws(() => checkManifest(bad), /graphs.encoder.file: "..\/encoder.onnx" must be a plain name inside the bundle/);
  assert.throws(() => parseManifest(JSON.stringify(manifest()).replace('"format_version":1', '"format_version":1.0')),
    /format_version: must be the integer 1 \(the version this capkit reads\), got 1.0/);
  assert.equal(checkManifest(manifest({ decoding: { beam_size: 3 } })).decoding.beam, 3);
  assert.equal(checkManifest(manifest({ extra: 'ignored' })).maxLength, 10);
});

test('a graph whose sha256 differs from the manifest is refused before it is loaded', async () => {
  const folder = mkdtempSync(join(tmpdir(), 'capkit-js-'));
  writeFileSync(join(folder, 'capkit.json'), JSON.stringify(manifest()));
  writeFileSync(join(folder, 'encoder.onnx'), 'enc');
  writeFileSync(join(folder, 'decoder_step.onnx'), 'tampered');
  await assert.rejects(Captioner.create(folder), (e) => e instanceof BundleError &&
    e.message === `${folder}: decoder_step.onnx has sha256 ${sha('tampered').slice(0, 12)}..., the manifest says ${sha('dec').slice(0, 12)}...`);
  writeFileSync(join(folder, 'capkit.json'), '{"format_version": 1, ');
  await assert.rejects(Captioner.create(folder), (e) => e instanceof BundleError && e.message.startsWith(`${folder}: capkit.json: not a valid JSON manifest`));
  await assert.rejects(Captioner.create(join(folder, 'none')), /no such bundle folder/);
});

test('corrupt and unknown image bytes give one ImageError line', () => {
  const cases = [
    [Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0, 0, 0]), '<bytes>: corrupt or unreadable image'],
    [Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 13, 10, 26, 10, 0, 0]), '<bytes>: corrupt or unreadable image'],
    [new TextEncoder().encode('hello'), '<bytes>: not an image file'],
  ];
  for (const [bytes, message] of cases) {
    assert.throws(() => decodeImageBytes(bytes, '<bytes>', DEFAULT_LIMITS), (e) => e instanceof ImageError && e.message.startsWith(message) && !e.message.includes('\n'));
  }
});
