// One-line errors, as the Python runtime's CapkitError family (runtime/errors.py).

/** Any bad input: a bundle, an image or an option. The message is one line naming the problem. */
export class CapkitError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(String(message).split(/\s+/).join(' ').trim());
    this.name = new.target.name;
  }
}
/** A bundle that cannot be used (runtime/manifest.py BundleError). */
export class BundleError extends CapkitError {}
/** An input that cannot be read as an image (runtime/image_files.py ImageError). */
export class ImageError extends CapkitError {}
/** A decoding option outside its range (runtime/decoding.py DecodingOptionsError). */
export class DecodingOptionsError extends CapkitError {}
/** A value over one of the limits (runtime/limits.py LimitError). */
export class LimitError extends CapkitError {}

/** The limits of runtime/limits.py, with the same defaults. */
export const DEFAULT_LIMITS = Object.freeze({
  max_image_pixels: 50_000_000,
  max_aspect_ratio: 50.0,
  max_resize: 2048,
  max_crop: 1024,
  max_length: 512,
  max_beam: 64,
  max_threads: 256,
  max_batch_size: 1024,
  max_manifest_bytes: 64 * 1024 * 1024,
  max_vocab_size: 1_000_000,
});

/** Python's ``{value:g}`` for the numbers a limit message shows. */
export function formatG(value) {
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return String(value);
  const s = Number(value).toPrecision(6);
  if (s.includes('e')) {
    const [m, e] = s.split('e');
    const mant = m.includes('.') ? m.replace(/\.?0+$/, '') : m;
    const exp = Number(e);
    return `${mant}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

/**
 * Limits.check: throws LimitError when ``value`` is over ``limits[name]``.
 * @param {Record<string, number>} limits @param {string} name @param {number} value @param {string} what
 */
export function checkLimit(limits, name, value, what) {
  const limit = limits[name];
  if (value > limit) {
    throw new LimitError(`${what} ${formatG(value)} is over the limit of ${formatG(limit)} (Limits.${name}; raise it to allow more)`);
  }
}

/** A short, bounded rendering of a value for a message (JSON's spelling). */
export function show(value) {
  let s;
  try {
    s = value === undefined ? 'undefined' : JSON.stringify(value);
  } catch {
    s = String(value);
  }
  if (s === undefined) s = String(value);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
