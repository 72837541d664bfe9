import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { SeedSequence, defaultRng, intToUint32Array } from '../src/random.js';

const fixture = JSON.parse(readFileSync(new URL('./fixtures/numpy_random.json', import.meta.url), 'utf8'));

test('default_rng(seed).random() equals numpy bit for bit (first 1000 doubles, 4 seeds)', () => {
  for (const [seed, expected] of Object.entries(fixture)) {
    const g = defaultRng(BigInt(seed));
    const got = Array.from({ length: expected.length }, () => g.random());
    assert.deepEqual(got, expected, `seed ${seed}`);
  }
});

test('seeds are split into uint32 words as numpy does (0 is one word)', () => {
  assert.deepEqual(intToUint32Array(0), [0]);
  assert.deepEqual(intToUint32Array(2n ** 64n + 3n), [3, 0, 1]);
  assert.notDeepEqual(new SeedSequence(1).pool, new SeedSequence(0).pool);
});
