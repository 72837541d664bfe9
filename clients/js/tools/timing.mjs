#!/usr/bin/env node
// Where a caption's time goes in Node (onnxruntime-node): the medians of Captioner.caption's timings.
//   node tools/timing.mjs BUNDLE IMAGE [REPEATS] [THREADS] [WARMUP]   (WARMUP captions first, untimed; default 1)
// prints {median_ms, stages: {decode_ms, preprocess_ms, encoder_ms, steps_ms, steps, decoding_ms, total_ms}, warmup_ms,
// threads} as JSON; reports/js_speed.py puts it beside the page's (tools/browser-check.mjs) and the Python runtime's.
import { readFileSync } from 'node:fs';
import { Captioner } from '../src/node.js';
import { timeCaptions } from '../src/timings.js';

const [bundle, image, repeats = '40', threads = '1', warmup = '1'] = process.argv.slice(2);
const captioner = await Captioner.create(bundle, { threads: Number(threads) });
const timed = await timeCaptions(captioner, readFileSync(image), { repeats: Number(repeats), warmup: Math.max(1, Number(warmup)) });
process.stdout.write(`${JSON.stringify({ ...timed, threads: Number(threads) })}\n`);
await captioner.release();
