// One-line errors, as the Python runtime's CapkitError family (runtime/errors.py), and the spelling of
// values and numbers in their messages (Python's repr and format(value, 'g')).

import { DEFAULT_LIMITS } from './constants.generated.js';

export { DEFAULT_LIMITS };

/** @typedef {Record<keyof typeof DEFAULT_LIMITS, number>} Limits each limit of runtime/limits.py by name */

const LINE_BREAK = /\s*[\n\r\v\f\u0085\u2028\u2029]\s*/g;

/** Any bad input: a bundle, an image or an option. The message is one line naming the problem. */
export class CapkitError extends Error {
  /** @param {string} message (a line break and the white space around it become one space) */
  constructor(message) {
    super(String(message).replace(LINE_BREAK, ' ').trim());
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
 * @param {Limits} limits @param {keyof Limits} name @param {number} value @param {string} what
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

// Python's str.isprintable() is false for these (space aside): repr escapes them
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/** Python's repr of a str. @param {string} text */
function pythonString(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  const escapes = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', [quote]: `\\${quote}` };
  let out = '';
  for (const ch of text) {
    const code = /** @type {number} */ (ch.codePointAt(0));
    if (ch in escapes) out += escapes[ch];
    else if (ch === ' ' || !NOT_PRINTABLE.test(ch)) out += ch;
    else if (code <= 0xff) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else if (code <= 0xffff) out += `\\u${code.toString(16).padStart(4, '0')}`;
    else out += `\\U${code.toString(16).padStart(8, '0')}`;
  }
  return quote + out + quote;
}

/**
 * Python's repr of a number. JavaScript has one number type, so an integral value below 1e16 is shown as
 * Python shows an int (2, not 2.0); others as Python shows a float (shortest digits, 1e-05, 1e+16, inf).
 * @param {number} n
 */
function pythonNumber(n) {
  if (Number.isNaN(n)) return 'nan';
  if (!Number.isFinite(n)) return n > 0 ? 'inf' : '-inf';
  if (Number.isInteger(n) && Math.abs(n) < 1e16) return String(n);
  const [mantissa, exponent] = n.toExponential().split('e');
  const e = Number(exponent);
  if (e >= -4 && e < 16) return String(n);
  return `${mantissa}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
}

/**
 * Python's repr of a JSON-like value (None, True, 'text', [1, 2], {'a': 1}), as the Python runtime's
 * messages show a value it refuses; undefined is shown as None.
 * @param {unknown} value @param {Set<object>} [seen] the arrays and objects around this one (a cycle is [...])
 * @returns {string}
 */
export function pythonRepr(value, seen = new Set()) {
  if (value === null || value === undefined) return 'None';
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value === 'number') return pythonNumber(value);
  if (typeof value === 'bigint') return String(value);
  if (typeof value === 'string') return pythonString(value);
  if (typeof value !== 'object') return String(value);
  if (seen.has(value)) return Array.isArray(value) ? '[...]' : '{...}';
  seen.add(value);
  const text = Array.isArray(value) ? `[${value.map((v) => pythonRepr(v, seen)).join(', ')}]`
    : `{${Object.entries(value).map(([k, v]) => `${pythonString(k)}: ${pythonRepr(v, seen)}`).join(', ')}}`;
  seen.delete(value);
  return text;
}
