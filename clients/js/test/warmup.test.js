import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Captioner, CapkitError } from '../src/node.js';

const BUNDLE = fileURLToPath(new URL('./fixtures/tiny-bundle/', import.meta.url));

test('warmUp() runs blank captions for about the time asked, stops when aborted, and changes no caption', async () => {
  const captioner = await Captioner.create(BUNDLE);
  try {
    const pixels = new Float32Array(3 * captioner.spec.crop ** 2).map((_, i) => (i % 7) / 7);
    const before = await captioner.captionPixels(pixels, captioner.options({ temperature: 0.8, seed: 3 }));

    assert.equal(await captioner.warmUp(0), 1); // at least once
    const started = performance.now();
    const runs = await captioner.warmUp(150);
    const took = performance.now() - started;
    assert.ok(runs > 1 && took >= 150 && took < 5000, `${runs} runs in ${took} ms`);

    const aborted = new AbortController();
    aborted.abort();
    assert.equal(await captioner.warmUp(1000, { signal: aborted.signal }), 0);
    const stopping = new AbortController(); // aborted while it runs: it ends after the caption under way
    const running = captioner.warmUp(60000, { signal: stopping.signal });
    setTimeout(() => stopping.abort(), 50);
    const t = performance.now();
    assert.ok((await running) >= 1);
    assert.ok(performance.now() - t < 5000);

    assert.deepEqual(await captioner.captionPixels(pixels, captioner.options({ temperature: 0.8, seed: 3 })), before);
    for (const bad of [-1, Number.NaN, Infinity, '100', null]) {
      await assert.rejects(captioner.warmUp(/** @type {any} */ (bad)), (e) => e instanceof CapkitError
        && e.message.startsWith('warm-up time must be a number of milliseconds >= 0, got ') && !e.message.includes('\n'));
    }
  } finally {
    await captioner.release();
  }
});
