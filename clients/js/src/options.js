// The decoding options: their names, kinds and defaults come from runtime/decoding.py's DecodingOptions
// (constants.generated.js), and verifyOptions checks them as verify_options does, with the same one-line
// messages (test/fixtures/option_checks.json holds Python's answers; test/options.test.js compares).

import { DEFAULT_OPTIONS, OPTION_CHECKS } from './constants.generated.js';
import { DEFAULT_LIMITS, DecodingOptionsError, JsonFloat, checkLimit, formatG, pythonRepr } from './errors.js';

export { DEFAULT_OPTIONS };

/**
 * @typedef {object} DecodingOptions
 * @property {number} temperature 0: greedy argmax; > 0: sample from softmax(logits / T)
 * @property {number|null} top_k sample among the k most likely tokens only
 * @property {number|null} top_p sample from the smallest set of tokens whose probability reaches p
 * @property {number} beam beam width; > 1: beam search (temperature must be 0)
 * @property {number} max_length most tokens generated per caption, <end> included
 * @property {number|bigint|null} seed seeds every image's own generator; null: fresh entropy
 */

/** The option names, in DecodingOptions' order. */
export const OPTION_NAMES = Object.freeze(Object.keys(DEFAULT_OPTIONS));

const isInt = (/** @type {unknown} */ v) => (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint';
// a JsonFloat is a manifest's 2.0 (a float to Python, which an integer option refuses and a number option takes)
const isNumber = (/** @type {unknown} */ v) => typeof v === 'number' || typeof v === 'bigint' || v instanceof JsonFloat;
const label = (/** @type {string} */ name) => name.replace('_', '-'); // top_k -> top-k, as verify_options names it

/**
 * One option checked as its DecodingOptions field declares (OPTION_CHECKS), as runtime/decoding.py's _checked.
 * @param {string} name @param {any} value @param {(typeof OPTION_CHECKS)[keyof typeof OPTION_CHECKS]} check
 * @returns {number|bigint}
 */
function checked(name, value, check) {
  const refuse = (/** @type {string} */ message) => new DecodingOptionsError(`${label(name)} must be ${message}`);
  const { minimum, above, maximum } = /** @type {{minimum: number|null, above: number|null, maximum: number|null}} */ (check);
  if (check.kind === 'integer') {
    if (!isInt(value)) throw refuse(`an integer, got ${pythonRepr(value)}`);
    if (minimum != null && value < minimum) throw refuse(`an integer >= ${formatG(minimum)}, got ${pythonRepr(value)}`);
    return value;
  }
  if (!isNumber(value)) throw refuse(`a number, got ${pythonRepr(value)}`);
  const number = Number(value);
  if (typeof value === 'bigint' && !Number.isFinite(number)) {
    throw refuse(`a finite number, got an integer of ${String(value).length} digits`);
  }
  if (minimum != null && !(Number.isFinite(number) && number >= minimum)) {
    throw refuse(`a finite number >= ${formatG(minimum)}, got ${pythonRepr(value)}`);
  }
  if (maximum != null && !(Number(above) < number && number <= maximum)) {
    throw refuse(`in (${formatG(Number(above))}, ${formatG(maximum)}], got ${pythonRepr(value)}`);
  }
  return number;
}

/**
 * verify_options: every option's type and range, and its limit, in DecodingOptions' order, then the rule
 * that beam search is deterministic; returns plain numbers (a seed stays as given). Throws
 * DecodingOptionsError or LimitError with one line naming the option, as Python does.
 * @param {Record<string, any>} options every option (DEFAULT_OPTIONS with some set) @param {import('./errors.js').Limits} [limits]
 * @returns {DecodingOptions}
 */
export function verifyOptions(options, limits = DEFAULT_LIMITS) {
  /** @type {Record<string, any>} */
  const values = {};
  for (const [name, check] of Object.entries(OPTION_CHECKS)) {
    const value = options[name];
    values[name] = value == null && check.optional ? null : checked(name, value, check);
    if (check.limit != null) checkLimit(limits, check.limit, values[name], label(name));
  }
  const { temperature, top_k: topK, top_p: topP, beam } = values;
  if (beam > 1 && (temperature > 0 || topK || topP)) {
    throw new DecodingOptionsError('beam search is deterministic: use it with temperature 0 and no top-k/top-p');
  }
  const plain = (/** @type {any} */ v) => (v == null ? null : Number(v));
  return { temperature: Number(temperature), top_k: plain(topK), top_p: plain(topP), beam: Number(beam),
    max_length: Number(values.max_length), seed: values.seed };
}
