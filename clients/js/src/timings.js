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
