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
/** An integer too large to be a number where one is compared with a limit: Python's OverflowError there. */
export class NumberTooLargeError extends CapkitError {}

/**
 * A number that capkit.json writes as a float (``32.0``, ``1e3``) but whose value is an integer: Python reads a
 * float, which an integer field refuses and a message shows as ``32.0``; JSON.parse reads the integer 32.
 * python-json.js gives these as JsonFloat (a Number object); every other number is a primitive.
 */
export class JsonFloat extends Number {}

/** One line: every run of white space (line breaks included) made one space (runtime/errors.py one_line). */
export function oneLine(/** @type {unknown} */ text) {
  return String(text).split(/\s+/).filter(Boolean).join(' ');
}

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
 * @param {Limits} limits @param {keyof Limits} name @param {number | bigint | Number} value @param {string} what
 */
export function checkLimit(limits, name, value, what) {
  const limit = limits[name];
  if (value > limit) {
    throw new LimitError(`${what} ${shownNumber(value)} is over the limit of ${formatG(limit)} (Limits.${name}; raise it to allow more)`);
  }
}

/**
 * runtime/limits.py ``_shown``: ``%g``, or for an integer beyond a float's range its first digits and exponent.
 * @param {number | bigint} value
 */
function shownNumber(value) {
  const number = Number(value);
  if (Number.isFinite(number)) return formatG(number);
  const digits = String(value);
  return `${digits[0]}.${digits.slice(1, 3)}e+${digits.length - 1}`;
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

/** Python's repr of a float. @param {number} n */
function pythonFloat(n) {
  if (Number.isInteger(n) && Math.abs(n) < 1e16) return Object.is(n, -0) ? '-0.0' : `${n}.0`;
  return pythonNumber(n);
}

/**
 * Python's repr of a JSON-like value (None, True, 'text', [1, 2], {'a': 1}), as the Python runtime's
 * messages show a value it refuses; undefined is shown as None.
 * @param {unknown} value @param {Set<object>} [seen] the arrays and objects around this one (a cycle is [...])
 * @returns {string}
 */
export function pythonRepr(value, seen = new Set()) {
  if (value === null || value === undefined) return 'None';
  if (value instanceof JsonFloat) return pythonFloat(value.valueOf());
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

/** The name of the Python type a JSON value becomes (``type(value).__name__``). @param {unknown} value */
export function pythonType(value) {
  if (value === null || value === undefined) return 'NoneType';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'bigint' || (typeof value === 'number' && Number.isInteger(value))) return 'int';
  if (typeof value === 'number' || value instanceof JsonFloat) return 'float';
  if (typeof value === 'string') return 'str';
  return Array.isArray(value) ? 'list' : 'dict';
}

/** Python's str < str: by code point (JavaScript's < compares UTF-16 units). @param {string} a @param {string} b */
function byCodePoint(a, b) {
  const [x, y] = [Array.from(a), Array.from(b)];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = /** @type {number} */ (x[i].codePointAt(0)) - /** @type {number} */ (y[i].codePointAt(0));
    if (d) return d;
  }
  return x.length - y.length;
}

/** reprlib's split of ``most`` characters around its '...': the first ``i`` and the last ``j``. */
function around(/** @type {number} */ most) {
  const i = Math.max(0, Math.floor((most - 3) / 2));
  return [i, Math.max(0, most - 3 - i)];
}

/** ``text[:i] + '...' + text[len(text) - j:]``, by code point. @param {string[]} chars @param {number} most */
function middle(chars, most) {
  const [i, j] = around(most);
  return `${chars.slice(0, i).join('')}...${chars.slice(chars.length - j).join('')}`;
}

/** reprlib's cut of a repr longer than ``most`` characters. @param {string} text @param {number} most */
const cut = (text, most) => (Array.from(text).length > most ? middle(Array.from(text), most) : text);

/**
 * Python's reprlib.Repr().repr(value) with its limits set as in ``limits``: a repr bounded in length, as the
 * Python runtime's messages show a refused value (strings cut in the middle, lists after 6 items, dicts after 4
 * keys in sorted order, nesting deeper than maxlevel as ...).
 * @param {unknown} value @param {{maxstring?: number, maxother?: number, maxlong?: number, maxlevel?: number}} [limits]
 * @returns {string}
 */
export function shortRepr(value, { maxstring = 30, maxother = 30, maxlong = 40, maxlevel = 6 } = {}) {
  const [maxlist, maxdict] = [6, 4];
  /** @returns {string} */
  const repr = (/** @type {unknown} */ x, /** @type {number} */ level) => {
    if (typeof x === 'string') {
      const chars = Array.from(x);
      const s = pythonRepr(chars.slice(0, maxstring).join(''));
      if (Array.from(s).length <= maxstring) return s;
      const [i, j] = around(maxstring); // the repr of both ends, then cut again (reprlib.Repr.repr_str)
      return middle(Array.from(pythonRepr(chars.slice(0, i).join('') + chars.slice(chars.length - j).join(''))), maxstring);
    }
    if (typeof x === 'bigint' || (typeof x === 'number' && pythonType(x) === 'int')) return cut(String(x), maxlong);
    if (Array.isArray(x)) {
      if (level <= 0 && x.length) return '[...]';
      const pieces = x.slice(0, maxlist).map((item) => repr(item, level - 1));
      return `[${[...pieces, ...(x.length > maxlist ? ['...'] : [])].join(', ')}]`;
    }
    if (x !== null && typeof x === 'object' && !(x instanceof JsonFloat)) {
      const keys = Object.keys(x).sort(byCodePoint);
      if (!keys.length) return '{}';
      if (level <= 0) return '{...}';
      const pieces = keys.slice(0, maxdict).map((k) => `${repr(k, level - 1)}: ${repr(/** @type {any} */ (x)[k], level - 1)}`);
      return `{${[...pieces, ...(keys.length > maxdict ? ['...'] : [])].join(', ')}}`;
    }
    return cut(pythonRepr(x), maxother); // None, True, a float: reprlib's repr_instance
  };
  return repr(value, maxlevel);
}

/**
 * A refused value as runtime/manifest.py's _show spells it in a message: JSON's spelling for true, false and
 * null, else a reprlib repr of at most 60 characters a string (40 digits an integer), 3 levels deep.
 * @param {unknown} value
 */
export function show(value) {
  if (value === null || typeof value === 'boolean') return JSON.stringify(value);
  return shortRepr(value, { maxstring: 60, maxother: 60, maxlong: 40, maxlevel: 3 });
}
