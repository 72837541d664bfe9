import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode } from '../src/decoding.js';
import { verifyOptions, DEFAULT_OPTIONS } from '../src/options.js';
import { stopwatch, timeCaptions, timed } from '../src/timings.js';

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

test('timeCaptions() keeps each warm-up caption\'s time, then gives the medians of the timed ones and their stages', async () => {
  const calls = [];
  const captioner = {
    caption: async (image, options, timings) => {
      calls.push(timings ? 'timed' : 'warm-up');
      await sleep(calls.length <= 2 ? 30 : 5); // the two warm-up captions are slow
      if (timings) Object.assign(timings, { encoder_ms: calls.length, steps: 3 });
      return { text: image };
    },
  };
  const result = await timeCaptions(captioner, 'x', { repeats: 5, warmup: 2 });
  assert.deepEqual(calls, ['warm-up', 'warm-up', 'timed', 'timed', 'timed', 'timed', 'timed']);
  assert.equal(result.warmup_ms.length, 2);
  assert.ok(result.warmup_ms.every((ms) => ms >= 29), `${result.warmup_ms}`);
  assert.ok(result.median_ms >= 4 && result.median_ms < 29, `${result.median_ms}`);
  assert.deepEqual(result.stages, { encoder_ms: 5, steps: 3 }); // calls 3 to 7: the median is 5
  const none = await timeCaptions(captioner, 'x', { repeats: 0, warmup: 1 });
  assert.equal(none.median_ms, null);
  assert.deepEqual(none.stages, {});
});
