// Where a caption's time goes: Captioner.caption(image, options, timings) fills `timings` through these two.

/**
 * Where a caption's time went, in milliseconds (Captioner.caption's `timings`): the image decoded to pixels, the
 * pixels preprocessed, the encoder graph, the step graph (all `steps` runs), and the decoding loop's own work between
 * them (decoding_ms: choosing tokens, the tensors in and out); total_ms: the whole call. captionPixels fills encoder_ms,
 * steps_ms, steps and decoding_ms.
 * @typedef {{decode_ms?: number, preprocess_ms?: number, encoder_ms: number, steps_ms: number, steps: number,
 *   decoding_ms: number, total_ms?: number}} Timings
 */

/** A function that adds the time since its last call to `timings[key]` (a null key: total_ms, the time since the
 * first); nothing when `timings` is null. */
export function stopwatch(timings) {
  if (!timings) return () => {};
  const first = performance.now();
  let last = first;
  return (key) => {
    const now = performance.now();
    if (key === null) timings.total_ms = now - first;
    else timings[key] = (timings[key] || 0) + now - last;
    last = now;
  };
}

/** `inference` whose graph runs add their time to `timings` (encoder_ms, steps_ms and steps). */
export function timed(inference, timings) {
  Object.assign(timings, { encoder_ms: 0, steps_ms: 0, steps: 0 });
  const clock = (key, run) => async (...args) => {
    const t = performance.now();
    const out = await run(...args);
    timings[key] += performance.now() - t;
    if (key === 'steps_ms') timings.steps += 1;
    return out;
  };
  return {
    ...inference,
    encode: clock('encoder_ms', inference.encode),
    step: clock('steps_ms', inference.step),
    greedyStep: inference.greedyStep && clock('steps_ms', inference.greedyStep),
  };
}

/**
 * `captioner.caption(image)` timed: `warmup` captions first, each one's time kept in order (warmup_ms), then `repeats`
 * more with their Timings; the median caption (null without repeats) and the median of each stage. tools/timing.mjs
 * (Node) and tools/browser-check.mjs (the page) report it.
 * @param {{caption: (image: any, options?: object, timings?: object) => Promise<any>}} captioner @param {any} image
 * @param {{repeats?: number, warmup?: number}} [counts]
 * @returns {Promise<{median_ms: number|null, stages: Record<string, number|null>, warmup_ms: number[]}>}
 */
export async function timeCaptions(captioner, image, { repeats = 40, warmup = 1 } = {}) {
  const warmupMs = [];
  for (let i = 0; i < warmup; i++) {
    const started = performance.now();
    await captioner.caption(image);
    warmupMs.push(performance.now() - started);
  }
  const times = [];
  const stages = {};
  for (let i = 0; i < repeats; i++) {
    const timings = {};
    const started = performance.now();
    await captioner.caption(image, {}, timings);
    times.push(performance.now() - started);
    for (const [key, value] of Object.entries(timings)) (stages[key] ||= []).push(value);
  }
  const median = (/** @type {number[]} */ values) => (values.length ? values.sort((a, b) => a - b)[Math.floor(values.length / 2)] : null);
  const breakdown = Object.fromEntries(Object.entries(stages).map(([key, values]) => [key, median(values)]));
  return { median_ms: median(times), stages: breakdown, warmup_ms: warmupMs };
}
