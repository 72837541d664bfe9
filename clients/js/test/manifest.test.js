import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { BundleError, Captioner, ImageError, LimitError } from '../src/node.js';
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

test('the manifest schema refuses what runtime/manifest.py refuses, in one line', () => {
  const cases = [
    [{ format_version: 2 }, 'format_version: must be the integer 1 (the version this capkit reads), got 2'],
    [{ format_version: '1' }, 'format_version: must be the integer 1 (the version this capkit reads), got \'1\''],
    [{ format_version: true }, 'format_version: must be the integer 1 (the version this capkit reads), got true'],
    [{ max_length: 0 }, 'max_length: must be an integer >= 1, got 0'],
    [{ vocab: ['<pad>', '<start>', '<end>', '<unk>', 'a', 'a'] }, "vocab[5]: 'a' repeats vocab[4]; words must be distinct"],
    [{ preprocess: { resize: 32, crop: 32, mean: [0, 0, 0], std: [0.2, 0, 0.2] } }, 'preprocess.std: must be 3 finite numbers > 0, got [0.2, 0, 0.2]'],
    [{ preprocess: { resize: 32, crop: 32, mean: [0, 0, 0], std: [1, 1, 1], gamma: 2 } }, "preprocess: unknown key 'gamma'"],
    [{ decoding: { beam: 2, temperature: 1 } }, 'decoding: beam search is deterministic'],
    [{ decoding: { greedy: true } }, "decoding: unknown option 'greedy'"],
    [{ precision: 'fp8' }, "precision: must be one of fp32, fp16, int8, got 'fp8'"],
  ];
  for (const [over, message] of cases) {
    assert.throws(() => checkManifest(manifest(over)), (e) => e instanceof BundleError && e.message.startsWith(message), message);
  }
  const bad = manifest();
  bad.graphs.encoder.file = '../encoder.onnx';
  assert.throws(() => checkManifest(bad), /graphs.encoder.file: '..\/encoder.onnx' must be a plain name inside the bundle/);
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
  await assert.rejects(Captioner.create(folder, { threads: 0 }), (e) => e.message === 'threads must be an integer >= 1, got 0');
  const most = DEFAULT_LIMITS.max_threads;
  await assert.rejects(Captioner.create(folder, { threads: most + 1 }),
    (e) => e instanceof LimitError && e.message === `threads ${most + 1} is over the limit of ${most} (Limits.max_threads; raise it to allow more)`);
});

test('corrupt and unknown image bytes give one ImageError line', async () => {
  const cases = [
    [Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0, 0, 0]), '<bytes>: corrupt or unreadable image'],
    [Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 13, 10, 26, 10, 0, 0]), '<bytes>: corrupt or unreadable image'],
    [new TextEncoder().encode('hello'), '<bytes>: not an image file'],
  ];
  for (const [bytes, message] of cases) {
    await assert.rejects(decodeImageBytes(bytes, '<bytes>', DEFAULT_LIMITS), (e) => e instanceof ImageError && e.message.startsWith(message) && !e.message.includes('\n'));
  }
});

test('a JPEG decodes at full size, EXIF orientation applied once (sharp never rotates), with sharp where it loads', async () => {
  const { default: jpeg } = await import('jpeg-js');
  const { jpegDecoder } = await import('../src/image-node.js');
  let sharpLoads = true;
  try { await import('sharp'); } catch { sharpLoads = false; }
  assert.equal(await jpegDecoder(), sharpLoads && process.env.CAPKIT_JS_JPEG_DECODER !== 'jpeg-js' ? 'sharp' : 'jpeg-js');
  const [w, h] = [32, 16]; // left half red, right half blue
  const rgba = new Uint8Array(w * h * 4);
  for (let i = 0; i < w * h; i++) rgba.set(i % w < w / 2 ? [255, 0, 0, 255] : [0, 0, 255, 255], i * 4);
  const encoded = jpeg.encode({ width: w, height: h, data: rgba }, 95).data;
  // an APP1 Exif block (big-endian TIFF, one IFD entry: Orientation = 6, turn 90 degrees clockwise) after SOI
  const tiff = [0x4d, 0x4d, 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0];
  const app1 = [0xff, 0xe1, 0, 2 + 6 + tiff.length, 0x45, 0x78, 0x69, 0x66, 0, 0, ...tiff];
  const rotated = Uint8Array.from([...encoded.subarray(0, 2), ...app1, ...encoded.subarray(2)]);
  const pixel = (img, x, y) => Array.from(img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3));
  const near = (got, want) => got.every((v, c) => Math.abs(v - want[c]) <= 8);
  const plain = await decodeImageBytes(encoded, '<bytes>', DEFAULT_LIMITS);
  assert.deepEqual([plain.width, plain.height, plain.data.length], [w, h, w * h * 3]);
  assert.ok(near(pixel(plain, 2, 8), [255, 0, 0]) && near(pixel(plain, w - 3, 8), [0, 0, 255]), 'colours');
  const turned = await decodeImageBytes(rotated, '<bytes>', DEFAULT_LIMITS);
  assert.deepEqual([turned.width, turned.height], [h, w]); // turned clockwise: red on top, blue below
  assert.ok(near(pixel(turned, 8, 2), [255, 0, 0]) && near(pixel(turned, 8, w - 3), [0, 0, 255]), 'orientation');
});
