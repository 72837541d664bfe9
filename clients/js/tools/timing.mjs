#!/usr/bin/env node
// Where a caption's time goes in Node (onnxruntime-node): the medians of Captioner.caption's timings.
//   node tools/timing.mjs BUNDLE IMAGE [REPEATS] [THREADS] [WARMUP]   (WARMUP captions first, untimed; default 1)
// prints {median_ms, stages: {decode_ms, preprocess_ms, encoder_ms, steps_ms, steps, decoding_ms, total_ms}, threads}
// as JSON; reports/js_speed.py puts it beside the page's (tools/browser-check.mjs) and the Python runtime's.
import { readFileSync } from 'node:fs';
import { Captioner } from '../src/node.js';

const [bundle, image, repeats = '40', threads = '1', warmup = '1'] = process.argv.slice(2);
const captioner = await Captioner.create(bundle, { threads: Number(threads) });
const bytes = readFileSync(image);
for (let i = 0; i < Math.max(1, Number(warmup)); i++) await captioner.caption(bytes);
const times = [];
const stages = {};
for (let i = 0; i < Number(repeats); i++) {
  const timings = {};
  const started = performance.now();
  await captioner.caption(bytes, {}, timings);
  times.push(performance.now() - started);
  for (const [key, value] of Object.entries(timings)) (stages[key] ||= []).push(value);
}
const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
const breakdown = Object.fromEntries(Object.entries(stages).map(([key, values]) => [key, median(values)]));
process.stdout.write(`${JSON.stringify({ median_ms: median(times), stages: breakdown, threads: Number(threads) })}\n`);
await captioner.release();
