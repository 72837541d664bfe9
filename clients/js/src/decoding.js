// The decoding loop of runtime/decoding.py: greedy, temperature sampling with top-k / top-p, and beam
// search, with the same definitions (float64 scores, numpy's pairwise summation, stable sorts), so that
// the same seed gives the Python runtime's captions.

import { defaultRng } from './random.js';

/** @typedef {import('./options.js').DecodingOptions} DecodingOptions */

/**
 * @typedef {object} DecodingResult
 * @property {number[]} tokens generated ids, <start> and <end> left out
 * @property {number} logprob sum of log softmax(logits) over the generated tokens, <end> included
 * @property {boolean} finished true when <end> was produced within max_length
 */

/** numpy's pairwise summation of a float64 row (what ``x.sum(axis=-1)`` computes). */
export function pairwiseSum(a, start = 0, n = a.length - start) {
  if (n < 8) {
    let res = 0.0;
    for (let i = 0; i < n; i++) res += a[start + i];
    return res;
  }
  if (n <= 128) {
    const r = [a[start], a[start + 1], a[start + 2], a[start + 3], a[start + 4], a[start + 5], a[start + 6], a[start + 7]];
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += a[start + i + j];
    let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[start + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwiseSum(a, start, n2) + pairwiseSum(a, start + n2, n - n2);
}

/** log_softmax of one row of float32 logits, in float64. @param {ArrayLike<number>} row */
export function logSoftmax(row) {
  const x = Float64Array.from(row);
  let best = -Infinity;
  for (const v of x) if (v > best) best = v;
  for (let i = 0; i < x.length; i++) x[i] -= best;
  const e = x.map(Math.exp);
  const lse = Math.log(pairwiseSum(e));
  return x.map((v) => v - lse);
}

/** log_softmax(row)[chosen], as chosen_log_softmax. */
export function chosenLogSoftmax(row, chosen) {
  const x = Float64Array.from(row);
  let best = -Infinity;
  for (const v of x) if (v > best) best = v;
  const picked = x[chosen] - best;
  for (let i = 0; i < x.length; i++) x[i] = Math.exp(x[i] - best);
  return picked - Math.log(pairwiseSum(x));
}

/** argmax (the first maximum). */
export function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** TopK.apply: scores below the k-th largest become -inf, in place. @param {Float64Array} scores */
export function topK(scores, k) {
  if (k >= scores.length) return;
  const kth = Float64Array.from(scores).sort()[scores.length - k];
  for (let i = 0; i < scores.length; i++) if (scores[i] < kth) scores[i] = -Infinity;
}

/** A stable argsort of -values (descending, ties in index order). */
function argsortDescending(values) {
  const order = Array.from(values, (_, i) => i);
  order.sort((a, b) => {
    const x = -values[a];
    const y = -values[b];
    return x < y ? -1 : x > y ? 1 : a - b;
  });
  return order;
}

/** TopP.apply: keeps the smallest set of most likely tokens whose probability reaches p, in place. */
export function topP(scores, p) {
  if (p >= 1.0) return;
  const order = argsortDescending(scores);
  const ranked = order.map((i) => scores[i]);
  const probs = Float64Array.from(ranked, (v) => Math.exp(v - ranked[0]));
  const total = pairwiseSum(probs);
  let cumulative = 0.0;
  for (let r = 0; r < order.length; r++) {
    cumulative += probs[r];
    const drop = cumulative / total - probs[r] / total >= p;
    scores[order[r]] = drop ? -Infinity : ranked[r];
  }
}

/** sample_from_scores: inverse CDF of softmax(scores) at the uniform u. @param {Float64Array} scores */
export function sampleFromScores(scores, u) {
  let best = -Infinity;
  for (const v of scores) if (v > best) best = v;
  const cdf = new Float64Array(scores.length);
  let sum = 0.0;
  for (let i = 0; i < scores.length; i++) {
    sum += Math.exp(scores[i] - best);
    cdf[i] = sum;
  }
  const target = u * cdf[cdf.length - 1];
  let token = 0;
  for (let i = 0; i < cdf.length; i++) if (cdf[i] <= target) token++;
  return Math.min(token, scores.length - 1);
}

/** A seed for an unseeded sampler: 128 bits of fresh entropy (SeedSequence() does the same). */
function freshSeed() {
  const words = new Uint32Array(4);
  globalThis.crypto.getRandomValues(words);
  return words.reduce((acc, w) => (acc << 32n) | BigInt(w), 0n);
}

/**
 * SamplingDecoder, for one image (batch 1): greedy or temperature sampling.
 */
export class SamplingDecoder {
  /** @param {number} startId @param {number} endId @param {DecodingOptions} options */
  constructor(startId, endId, options) {
    this.startId = startId;
    this.endId = endId;
    this.options = options;
    this.greedy = options.temperature === 0 || options.top_k === 1;
    this.tokens = [];
    this.logprob = 0.0;
    this.finished = false;
    this.rng = this.greedy ? null : defaultRng(options.seed != null ? options.seed : freshSeed());
  }

  /** Records a chosen token; returns whether decoding goes on. */
  advance(token, logprob) {
    this.logprob += logprob;
    if (token === this.endId) {
      this.finished = true;
      return false;
    }
    this.tokens.push(token);
    return true;
  }

  /** Chooses from one row of logits; returns the token. */
  choose(logits) {
    if (this.greedy || this.rng === null) return argmax(logits);
    const x = Float64Array.from(logits);
    let best = -Infinity;
    for (const v of x) if (v > best) best = v;
    const scores = x.map((v) => (v - best) / this.options.temperature);
    if (this.options.top_k != null) topK(scores, this.options.top_k);
    if (this.options.top_p != null) topP(scores, this.options.top_p);
    return sampleFromScores(scores, this.rng.random());
  }
}

/**
 * BeamSearchDecoder for one image: the beams are rows of one batch.
 */
export class BeamSearchDecoder {
  /** @param {number} startId @param {number} endId @param {number} beamSize */
  constructor(startId, endId, beamSize) {
    this.startId = startId;
    this.endId = endId;
    this.n = beamSize;
    this.scores = Array.from({ length: beamSize }, (_, i) => (i === 0 ? 0.0 : -Infinity));
    /** @type {number[][]} */
    this.sequences = Array.from({ length: beamSize }, () => []);
    /** @type {[number, number[], boolean][]} */
    this.done = [];
    this.live = true;
  }

  /**
   * One step: logits rows (N x V, flat) -> the next tokens and the rows they continue from,
   * or null when the image is done.
   * @param {Float32Array} logits @param {number} vocab
   */
  update(logits, vocab) {
    const n = this.n;
    const candidates = new Float64Array(n * vocab);
    for (let r = 0; r < n; r++) {
      const ls = logSoftmax(logits.subarray(r * vocab, (r + 1) * vocab));
      for (let v = 0; v < vocab; v++) candidates[r * vocab + v] = this.scores[r] + ls[v];
    }
    const best = argsortDescending(candidates).slice(0, 2 * n);
    const tokens = [];
    const rows = [];
    const scores = [];
    const sequences = [];
    let kept = 0;
    for (let rank = 0; rank < best.length; rank++) {
      const flat = best[rank];
      const score = candidates[flat];
      if (score === -Infinity) break;
      const row = Math.floor(flat / vocab);
      const token = flat % vocab;
      if (token === this.endId) {
        if (rank < n) this.done.push([score, this.sequences[row].slice(), true]);
      } else if (kept < n) {
        kept++;
        tokens.push(token);
        rows.push(row);
        scores.push(score);
        sequences.push([...this.sequences[row], token]);
      }
    }
    const liveBest = scores.length ? Math.max(...scores) : -Infinity;
    const doneBest = this.done.length ? Math.max(...this.done.map((h) => h[0])) : -Infinity;
    if (kept === 0 || doneBest >= liveBest) {
      this.live = false;
      return null;
    }
    while (kept < n) {
      kept++;
      tokens.push(this.endId);
      rows.push(0);
      scores.push(-Infinity);
      sequences.push([]);
    }
    this.scores = scores;
    this.sequences = sequences;
    return { tokens, rows };
  }

  /** @returns {DecodingResult} */
  finish() {
    if (this.live) {
      for (let b = 0; b < this.n; b++) {
        if (this.scores[b] > -Infinity) this.done.push([this.scores[b], this.sequences[b], false]);
      }
    }
    let best = this.done[0];
    for (const h of this.done) if (h[0] > best[0]) best = h;
    return { tokens: best[1], logprob: best[0], finished: best[2] };
  }
}

/**
 * @typedef {object} Inference
 * @property {(image: Float32Array) => Promise<any>} encode one preprocessed image (3 x crop x crop) -> state
 * @property {(tokens: number[], state: any) => Promise<{logits: Float32Array, vocab: number, state: any}>} step
 * @property {((tokens: number[], state: any) => Promise<{tokens: number[], logprobs: number[], state: any}>)|null} greedyStep
 * @property {(state: any, rows: number[]) => any} select
 */

/**
 * decode: one image through the loop of runtime/decoding.py.
 * @param {Inference} inference @param {Float32Array} image @param {DecodingOptions} options
 * @param {{startId: number, endId: number}} ids
 * @returns {Promise<DecodingResult>}
 */
export async function decode(inference, image, options, { startId, endId }) {
  let state = await inference.encode(image);
  if (options.beam > 1) {
    const decoder = new BeamSearchDecoder(startId, endId, options.beam);
    state = inference.select(state, new Array(options.beam).fill(0));
    let tokens = new Array(options.beam).fill(startId);
    for (let step = 0; step < options.max_length; step++) {
      const out = await inference.step(tokens, state);
      const next = decoder.update(out.logits, out.vocab);
      if (next === null) break;
      tokens = next.tokens;
      state = inference.select(out.state, next.rows);
    }
    return decoder.finish();
  }
  const decoder = new SamplingDecoder(startId, endId, options);
  let token = startId;
  for (let step = 0; step < options.max_length; step++) {
    let chosen;
    let logprob;
    if (decoder.greedy && inference.greedyStep) {
      const out = await inference.greedyStep([token], state);
      [chosen, logprob, state] = [out.tokens[0], out.logprobs[0], out.state];
    } else {
      const out = await inference.step([token], state);
      chosen = decoder.choose(out.logits);
      logprob = chosenLogSoftmax(out.logits, chosen);
      state = out.state;
    }
    if (!decoder.advance(chosen, logprob)) break;
    token = chosen;
  }
  return { tokens: decoder.tokens, logprob: decoder.logprob, finished: decoder.finished };
}
