// JSON text read as Python's json.loads reads it, so that a manifest check sees the values Python sees:
// - an integer written as a float (32.0, 1e3) stays a float (a JsonFloat), which an integer field refuses;
// - an integer beyond 2**53 stays exact (a BigInt), as Python's int does;
// - NaN, Infinity and -Infinity are read (a field then refuses them, as in Python).
// JSON.parse alone reads 32.0 as 32 and 2**70 as the nearest double, and its reviver cannot see a number's
// text before Node 21 (source text access). So each number token of the text is first swapped for a string
// that carries its spelling, JSON.parse reads the result (strings, escapes and syntax stay JSON.parse's), and
// an iterative walk turns those strings back into numbers (no recursion: the document may nest deeply before
// the manifest's depth check refuses it).

import { JsonFloat } from './errors.js';

// a number as JSON and Python spell it, at a given position (sticky)
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|NaN|-?Infinity/y;
const NUL = '\u0000'; // a JSON string can only start with it when its text starts with \u0000
const NUMBER_MARK = `${NUL}#`;
const MAX_DIGITS = 4300; // Python's int_max_str_digits: json.loads refuses an integer of more digits

/** A number's text -> the value Python's json reads: an int (a safe number or a BigInt) or a float. @param {string} text */
function number(text) {
  if (/^-?\d+$/.test(text)) {
    const digits = text.replace('-', '').length;
    if (digits > MAX_DIGITS) throw new SyntaxError(`an integer of ${digits} digits, over Python's limit of ${MAX_DIGITS}`);
    const value = Number(text);
    return Number.isSafeInteger(value) ? value : BigInt(text);
  }
  const value = Number(text); // NaN, Infinity and -Infinity too
  return Number.isInteger(value) ? new JsonFloat(value) : value;
}

/** A parsed string back to what the text said: a number marked above, or the string (one NUL taken off). */
function restored(/** @type {string} */ value) {
  if (!value.startsWith(NUL)) return value;
  return value.startsWith(NUMBER_MARK) ? number(value.slice(NUMBER_MARK.length)) : value.slice(1);
}

/** The index just after the string token that starts at ``start`` (a '"'), or the text's end when it has none. */
function stringEnd(/** @type {string} */ text, /** @type {number} */ start) {
  for (let quote = text.indexOf('"', start + 1); quote >= 0; quote = text.indexOf('"', quote + 1)) {
    let slashes = 0;
    while (text[quote - 1 - slashes] === '\\') slashes++;
    if (slashes % 2 === 0) return quote + 1; // not an escaped quote
  }
  return text.length;
}

/**
 * ``text`` with each number token (outside strings) replaced by a string holding its spelling after NUMBER_MARK,
 * and a NUL put before each string value whose text starts with \u0000 (so that none reads as a marked number).
 * A scan, not one regular expression: V8 runs out of stack matching a string token of millions of escapes.
 * @param {string} text
 */
function markNumbers(text) {
  const pieces = [];
  let copied = 0;
  for (let at = 0; at < text.length;) {
    if (text[at] === '"') {
      const end = stringEnd(text, at);
      let next = end;
      while (next < text.length && ' \t\n\r'.includes(text[next])) next++;
      if (text[next] !== ':' && /^\\u0000/i.test(text.slice(at + 1, at + 7))) { // a value, not a key
        pieces.push(text.slice(copied, at + 1), '\\u0000');
        copied = at + 1;
      }
      at = end;
      continue;
    }
    NUMBER.lastIndex = at;
    const found = NUMBER.exec(text);
    if (!found) {
      at++;
      continue;
    }
    pieces.push(text.slice(copied, at), JSON.stringify(NUMBER_MARK + found[0]));
    at += found[0].length;
    copied = at;
  }
  return pieces.join('') + text.slice(copied);
}

/**
 * capkit.json's text -> its value, as Python's json.loads gives it. Throws SyntaxError (JSON.parse's, for the
 * text as given) when the text is not JSON.
 * @param {string} text @returns {unknown}
 */
export function parsePythonJson(text) {
  const marked = markNumbers(text);
  let data;
  try {
    data = JSON.parse(marked);
  } catch {
    JSON.parse(text); // the error of the text as written (positions and tokens of the original)
    throw new SyntaxError('not JSON as Python reads it');
  }
  /** @type {any[]} */
  const containers = []; // arrays and objects whose items are still to be restored
  const restore = (/** @type {any} */ value) => {
    if (typeof value === 'string') return restored(value);
    if (value !== null && typeof value === 'object') containers.push(value);
    return value;
  };
  data = restore(data);
  while (containers.length) {
    const item = containers.pop();
    for (const key of Object.keys(item)) {
      const value = restore(item[key]);
      // defineProperty, not =: a key "__proto__" (an own property of JSON.parse's object) would set the prototype
      if (value !== item[key]) Object.defineProperty(item, key, { value, writable: true, enumerable: true, configurable: true });
    }
  }
  return data;
}
