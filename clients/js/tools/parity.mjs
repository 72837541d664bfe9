#!/usr/bin/env node
// Used by tests/test_js_parity.py: captions the images of a job (JSON) with the JS runtime and writes
// what it found (JSON): input tensors, greedy / beam / seeded-sampling tokens, the numpy stream, errors.
//   node tools/parity.mjs job.json out.json
import { readFileSync, writeFileSync } from 'node:fs';
import { Captioner, CapkitError, defaultRng } from '../src/node.js';
import { jpegDecoder } from '../src/image-node.js';

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const out = { bundles: {}, random: {}, errors: {}, jpegDecoder: await jpegDecoder() };

for (const [seed, n] of job.random || []) {
  const g = defaultRng(BigInt(seed));
  out.random[seed] = Array.from({ length: n }, () => g.random());
}

for (const [key, folder] of Object.entries(job.bundles || {})) {
  const captioner = await Captioner.create(folder, { threads: 1 });
  const images = [];
  for (const image of job.images) {
    const tensor = await captioner.preprocess(image);
    const greedy = await captioner.caption(image);
    const beam = await captioner.caption(image, { beam: 3 });
    const sampled = [];
    for (const seed of job.seeds) {
      sampled.push((await captioner.caption(image, { ...job.sampling, seed })).tokens);
    }
    images.push({ image, tensor: key === Object.keys(job.bundles)[0] ? Array.from(tensor) : null, greedy, beam, sampled });
  }
  out.bundles[key] = images;
}

// Bad input: each must give one line, a CapkitError, never a crash.
for (const [label, action] of Object.entries(job.errors || {})) {
  try {
    const captioner = await Captioner.create(action.bundle);
    await captioner.caption(action.image, action.options || {});
    out.errors[label] = { ok: true };
  } catch (e) {
    out.errors[label] = { name: e.name, message: e.message, capkit: e instanceof CapkitError };
  }
}
writeFileSync(process.argv[3], JSON.stringify(out));
