// The decoding options: their names, kinds and defaults come from runtime/decoding.py's DecodingOptions
// (constants.generated.js), and verifyOptions checks them as verify_options does, with the same one-line
// messages (test/fixtures/option_checks.json holds Python's answers; test/options.test.js compares).

import { DEFAULT_OPTIONS, OPTION_KINDS, REQUIRED_OPTIONS } from './constants.generated.js';
import { DEFAULT_LIMITS, DecodingOptionsError, checkLimit, pythonRepr } from './errors.js';

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
const isNumber = (/** @type {unknown} */ v) => typeof v === 'number' || typeof v === 'bigint';
const IS_KIND = { integer: isInt, number: isNumber };
const flag = (/** @type {string} */ name) => name.replace('_', '-'); // top_k -> top-k, as verify_options names it

/** The type checks: integers first, then numbers, each in DecodingOptions' order (as verify_options). */
function checkTypes(/** @type {Record<string, any>} */ options) {
  for (const kind of /** @type {const} */ (['integer', 'number'])) {
    for (const name of OPTION_NAMES.filter((n) => OPTION_KINDS[n] === kind)) {
      const value = options[name];
      if (!IS_KIND[kind](value) && (value != null || REQUIRED_OPTIONS.includes(name))) {
        throw new DecodingOptionsError(`${flag(name)} must be ${kind === 'integer' ? 'an integer' : 'a number'}, got ${pythonRepr(value)}`);
      }
      if (kind === 'number' && typeof value === 'bigint' && !Number.isFinite(Number(value))) {
        throw new DecodingOptionsError(`${flag(name)} must be a finite number, got an integer of ${String(value).length} digits`);
      }
    }
  }
}

/**
 * verify_options: every option's type and range, and the limits (max_length, beam); returns plain
 * numbers (a seed stays as given). Throws DecodingOptionsError or LimitError with one line naming the option.
 * @param {Record<string, any>} options every option (DEFAULT_OPTIONS with some set) @param {import('./errors.js').Limits} [limits]
 * @returns {DecodingOptions}
 */
export function verifyOptions(options, limits = DEFAULT_LIMITS) {
  checkTypes(options);
  const { top_k: topK, top_p: topP, beam, max_length: maxLength, seed } = options;
  const t = Number(options.temperature);
  const refuse = (/** @type {string} */ message) => new DecodingOptionsError(message);
  if (!Number.isFinite(t) || t < 0) throw refuse(`temperature must be a finite number >= 0, got ${pythonRepr(options.temperature)}`);
  if (topK != null && topK < 1) throw refuse(`top-k must be an integer >= 1, got ${pythonRepr(topK)}`);
  if (topP != null && !(Number(topP) > 0 && Number(topP) <= 1)) throw refuse(`top-p must be in (0, 1], got ${pythonRepr(topP)}`);
  if (beam < 1) throw refuse(`beam must be an integer >= 1, got ${pythonRepr(beam)}`);
  if (beam > 1 && (t > 0 || topK || topP)) throw refuse('beam search is deterministic: use it with temperature 0 and no top-k/top-p');
  if (maxLength < 1) throw refuse(`max-length must be an integer >= 1, got ${pythonRepr(maxLength)}`);
  if (seed != null && seed < 0) throw refuse(`seed must be >= 0, got ${pythonRepr(seed)}`);
  checkLimit(limits, 'max_length', Number(maxLength), 'max-length');
  checkLimit(limits, 'max_beam', Number(beam), 'beam');
  return {
    temperature: t,
    top_k: topK == null ? null : Number(topK),
    top_p: topP == null ? null : Number(topP),
    beam: Number(beam),
    max_length: Number(maxLength),
    seed: seed == null ? null : seed,
  };
}
