import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BeamSearchDecoder, pairwiseSum, sampleFromScores, topK, topP } from '../src/decoding.js';

test("sums are numpy's pairwise sums", () => {
  const a = Float64Array.from({ length: 300 }, (_, i) => Math.exp(Math.sin(i) * 20));
  let sequential = 0;
  for (const v of a) sequential += v;
  assert.notEqual(pairwiseSum(a), sequential); // the order of additions matters, and numpy's is pairwise
  assert.equal(pairwiseSum(Float64Array.from([1, 2, 3])), 6);
});

test('top-k keeps ties at the k-th score, top-p the smallest set reaching p, sampling is an inverse CDF', () => {
  const s = Float64Array.from([1, 3, 3, 0, 2]);
  topK(s, 2);
  assert.deepEqual(Array.from(s), [-Infinity, 3, 3, -Infinity, -Infinity]);
  const p = Float64Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
  topP(p, 0.7);
  assert.deepEqual(Array.from(p, Number.isFinite), [true, true, false]);
  const scores = Float64Array.from([Math.log(0.25), Math.log(0.25), Math.log(0.5)]);
  assert.equal(sampleFromScores(scores, 0.0), 0);
  assert.equal(sampleFromScores(scores, 0.3), 1);
  assert.equal(sampleFromScores(scores, 0.99), 2);
});

test('beam 1 search is greedy; an image ends once a finished hypothesis beats every live beam', () => {
  const d = new BeamSearchDecoder(1, 2, 1);
  const next = d.update(Float32Array.from([0, 0, -5, 0, 3]), 5);
  assert.deepEqual(next, { tokens: [4], rows: [0] });
  assert.equal(d.update(Float32Array.from([0, 0, 9, 0, 0]), 5), null);
  const result = d.finish();
  assert.deepEqual(result.tokens, [4]);
  assert.equal(result.finished, true);
});
