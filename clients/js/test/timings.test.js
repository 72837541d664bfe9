import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode } from '../src/decoding.js';
import { verifyOptions, DEFAULT_OPTIONS } from '../src/options.js';
import { stopwatch, timed } from '../src/timings.js';

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

test('timed() counts each graph run and its time, and leaves the answers alone', async () => {
  // a model that says token 3 twice, then <end> (2); its encoder takes 20 ms, each step 5 ms
  let calls = 0;
  const inference = {
    encode: async () => { await sleep(20); return ['state']; },
    step: async (tokens, state) => {
      await sleep(5);
      calls += 1;
      const logits = new Float32Array(4).fill(-10);
      logits[calls < 3 ? 3 : 2] = 10;
      return { logits, vocab: 4, state };
    },
    greedyStep: null,
    select: (state) => state,
  };
  const timings = {};
  const options = verifyOptions({ ...DEFAULT_OPTIONS, max_length: 10 });
  const result = await decode(timed(inference, timings), new Float32Array(1), options, { startId: 1, endId: 2 });
  assert.deepEqual(result.tokens, [3, 3]); // <end> left out, as in Python
  assert.equal(timings.steps, 3);
  assert.ok(timings.encoder_ms >= 19 && timings.encoder_ms < 200, `encoder_ms ${timings.encoder_ms}`);
  assert.ok(timings.steps_ms >= 14 && timings.steps_ms < 300, `steps_ms ${timings.steps_ms}`);
});

test('stopwatch() adds laps under their keys, total_ms the whole; with no object it records nothing', async () => {
  const timings = {};
  const lap = stopwatch(timings);
  await sleep(10);
  lap('decode_ms');
  await sleep(10);
  lap('preprocess_ms');
  lap(null);
  assert.ok(timings.decode_ms >= 9 && timings.preprocess_ms >= 9, JSON.stringify(timings));
  assert.ok(timings.total_ms >= timings.decode_ms + timings.preprocess_ms - 0.01);
  assert.doesNotThrow(() => stopwatch(null)('decode_ms'));
});
