// capkit.json's schema, as runtime/manifest.py check_manifest reads it: the same fields, ranges and
// one-line messages ("<field path>: <problem>"); the caller puts the bundle's name in front.

import {
  DECODING_FIELDS, DEFAULT_INTERPOLATION, DEFAULT_OPTIONS, FORMAT_VERSION, GRAPH_FORMATS, INTERPOLATIONS, LEGACY_DECODING_KEYS,
  MANIFEST_NAME, MAX_MANIFEST_DEPTH, PRECISIONS, PREPROCESS_KEYS, RECURRENT_CELLS, SPECIAL_TOKEN_IDS, SPECIAL_TOKENS,
} from './constants.generated.js';
import {
  BundleError, CapkitError, DEFAULT_LIMITS, JsonFloat, NumberTooLargeError, formatG, pythonRepr, pythonType, shortRepr, show,
} from './errors.js';
import { verifyOptions } from './options.js';
import { parsePythonJson } from './python-json.js';

export { FORMAT_VERSION, MANIFEST_NAME };

// control characters and lone surrogates (the u flag: a surrogate pair is one character, as in Python)
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\ud800-\udfff]/u;
// ... and what Python's \s matches (str.isspace: not JavaScript's \s, which also matches U+FEFF)
// eslint-disable-next-line no-control-regex
const NOT_A_WORD = /[\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ud800-\udfff]/u;
const SHA256 = /^[0-9a-f]{64}$/;

const fail = (path, problem) => new BundleError(`${path}: ${problem}`);
// the values python-json.js gives: an int is a safe integer or a BigInt, a float a number or a JsonFloat
const isInt = (v) => (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint';
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof JsonFloat);
const JSON_TYPES = { NoneType: 'null', bool: 'boolean', int: 'integer', float: 'number', str: 'string', list: 'array', dict: 'object' };
const jsonType = (v) => JSON_TYPES[pythonType(v)];
const has = (data, key) => Object.prototype.hasOwnProperty.call(data, key);
const get = (data, key, otherwise) => (has(data, key) ? data[key] : otherwise); // dict.get: a null stays null
const head = (text, n) => Array.from(text).slice(0, n).join(''); // text[:n] in Python, by code point

function field(data, key, path) {
  if (!has(data, key)) throw fail(path ? `${path}.${key}` : key, 'missing');
  return data[key];
}

function object(value, path) {
  if (!isObject(value)) throw fail(path, `must be an object, got ${jsonType(value)} ${show(value)}`);
  return value;
}

function int(value, path, limits, limit) {
  if (!isInt(value) || value < 1) throw fail(path, `must be an integer >= 1, got ${show(value)}`);
  if (value > limits[limit]) throw fail(path, `${show(value)} is over the limit of ${formatG(limits[limit])} (Limits.${limit}; raise it to allow more)`);
  return Number(value);
}

function name(value, path) {
  if (typeof value !== 'string' || !value || CONTROL.test(value)) {
    throw fail(path, `must be a non-empty name without control characters, got ${show(value)}`);
  }
  return value;
}

function names(value, path) {
  if (!Array.isArray(value) || !value.length) throw fail(path, `must be a non-empty array of names, got ${jsonType(value)} ${show(value)}`);
  return value.map((v, i) => name(v, `${path}[${i}]`));
}

function fileName(value, path) {
  if (typeof value !== 'string' || !value || CONTROL.test(value)) {
    throw fail(path, `must be a non-empty file name without control characters, got ${show(value)}`);
  }
  const parts = value.split(/[\\/]/);
  if (value.startsWith('/') || value.startsWith('\\') || /^[A-Za-z]:/.test(value) || parts.includes('..')) {
    throw fail(path, `${show(value)} must be a plain name inside the bundle`);
  }
  return value;
}

function distinct(list, path) {
  const seen = new Set();
  for (const n of list) {
    if (seen.has(n)) throw fail(path, `tensor name ${show(n)} is used twice`);
    seen.add(n);
  }
}

function depthOk(value, most) {
  /** @type {[any, number][]} */
  const stack = [[value, 1]];
  while (stack.length) {
    const [item, depth] = /** @type {[any, number]} */ (stack.pop());
    for (const child of Object.values(item)) {
      if (Array.isArray(child) || isObject(child)) {
        if (depth + 1 > most) return false;
        stack.push([child, depth + 1]);
      }
    }
  }
  return true;
}

function vocabulary(value, limits) {
  if (!Array.isArray(value)) throw fail('vocab', `must be an array of words, got ${jsonType(value)} ${show(value)}`);
  if (value.length > limits.max_vocab_size) {
    throw fail('vocab', `${value.length} words is over the limit of ${formatG(limits.max_vocab_size)} (Limits.max_vocab_size; raise it to allow more)`);
  }
  if (SPECIAL_TOKENS.some((t, i) => value[i] !== t)) {
    throw fail('vocab', `must start with ${SPECIAL_TOKENS.join(', ')}, got ${show(value.slice(0, SPECIAL_TOKENS.length))}`);
  }
  const seen = new Map();
  value.forEach((word, i) => {
    if (typeof word !== 'string' || !word || NOT_A_WORD.test(word)) {
      throw fail(`vocab[${i}]`, `must be a non-empty word without white space or control characters, got ${show(word)}`);
    }
    if (seen.has(word)) throw fail(`vocab[${i}]`, `${show(word)} repeats vocab[${seen.get(word)}]; words must be distinct`);
    seen.set(word, i);
  });
  return value;
}

/** The ids of <pad> <start> <end> <unk>: exactly the vocabulary's; returns them. */
function specialTokens(value, vocab) {
  const expected = SPECIAL_TOKEN_IDS;
  object(value, 'special_tokens');
  for (const [key, id] of Object.entries(value)) {
    if (!has(expected, key)) throw fail('special_tokens', `unknown token ${pythonRepr(head(key, 40))} (known: ${Object.keys(expected).join(', ')})`);
    if (!isInt(id) || id < 0 || id >= vocab.length) throw fail(`special_tokens.${key}`, `must be a token id in 0..${vocab.length - 1}, got ${show(id)}`);
    if (id !== expected[key]) throw fail(`special_tokens.${key}`, `is ${id}, but the vocabulary has ${vocab[expected[key]]} at ${expected[key]}`);
  }
  for (const key of Object.keys(expected)) if (!has(value, key)) throw fail(`special_tokens.${key}`, 'missing');
  return /** @type {SpecialTokens} */ ({ ...value });
}

// what mean and std must be besides finite numbers (runtime/preprocess.py FLOAT32_RULES)
const FLOAT32_RULES = {
  mean: 'must be 3 numbers that are finite in float32',
  std: 'must be 3 numbers > 0 for which (x - mean) / std is finite in float32 for pixels x from 0 to 1',
};

/** A real number that is neither infinite nor NaN, nor too big for a float (PreprocessSpec._finite). */
const finite = (v) => (typeof v === 'number' || typeof v === 'bigint' || v instanceof JsonFloat) && Number.isFinite(Number(v));

/**
 * Whether ``mean`` (checked first), or ``std``, keeps the float32 arithmetic of normalisation finite: (x - mean) / std
 * for pixels x from 0 to 1 (Math.fround rounds each step to float32, as preprocess.js normalises).
 * @param {'mean'|'std'} key @param {number[]} mean @param {number[]} std
 */
function finiteInFloat32(key, mean, std) {
  const f = Math.fround;
  if (key === 'mean') return mean.every((m) => Number.isFinite(f(m)));
  return [0, 1].every((x) => mean.every((m, c) => Number.isFinite(f(f(x - f(m)) / f(std[c])))));
}

/** PreprocessSpec.from_dict and its checks, with runtime/preprocess.py's messages (reprlib's repr of a value). */
function preprocessSpec(data) {
  if (!isObject(data)) throw fail('preprocess', `must be an object, got ${pythonType(data)}`);
  const unknown = Object.keys(data).filter((k) => !PREPROCESS_KEYS.includes(k));
  if (unknown.length) throw fail('preprocess', `unknown key ${pythonRepr(head(unknown[0], 40))} (known: ${PREPROCESS_KEYS.join(', ')})`);
  const missing = PREPROCESS_KEYS.slice(0, -1).filter((k) => !has(data, k));
  if (missing.length) throw fail(`preprocess.${missing[0]}`, 'missing');
  const interpolation = get(data, 'interpolation', DEFAULT_INTERPOLATION);
  if (typeof interpolation !== 'string' || !INTERPOLATIONS.includes(interpolation)) {
    throw fail('preprocess.interpolation', `must be one of ${INTERPOLATIONS.join(', ')}, got ${shortRepr(interpolation)}`);
  }
  for (const key of ['resize', 'crop']) {
    if (!isInt(data[key]) || data[key] < 1) throw fail(`preprocess.${key}`, `must be an integer >= 1, got ${shortRepr(data[key])}`);
  }
  const spec = { resize: data.resize, crop: data.crop, mean: [0, 0, 0], std: [1, 1, 1], interpolation };
  for (const [key, positive] of /** @type {['mean'|'std', boolean][]} */ ([['mean', false], ['std', true]])) {
    const v = data[key];
    if (!(Array.isArray(v) && v.length === 3 && v.every((x) => finite(x) && (!positive || x > 0)))) {
      throw fail(`preprocess.${key}`, `must be 3 finite numbers${positive ? ' > 0' : ''}, got ${shortRepr(v)}`);
    }
    spec[key] = v.map(Number);
    if (!finiteInFloat32(key, spec.mean, spec.std)) throw fail(`preprocess.${key}`, `${FLOAT32_RULES[key]}, got ${shortRepr(v)}`);
  }
  return spec;
}

function graphCommon(data, path) {
  object(data, path);
  const file = fileName(field(data, 'file', path), `${path}.file`);
  const sha256 = field(data, 'sha256', path);
  if (typeof sha256 !== 'string' || !SHA256.test(sha256)) throw fail(`${path}.sha256`, `must be 64 lower-case hex digits, got ${show(sha256)}`);
  return { file, sha256 };
}

function encoderGraph(data) {
  const path = 'graphs.encoder';
  const common = graphCommon(data, path);
  const imageInput = name(field(data, 'image_input', path), `${path}.image_input`);
  const stateOutputs = names(field(data, 'state_outputs', path), `${path}.state_outputs`);
  distinct(stateOutputs, `${path}.state_outputs`);
  return { ...common, imageInput, stateOutputs };
}

function decoderGraph(data) {
  const path = 'graphs.decoder_step';
  const common = graphCommon(data, path);
  const tokenInput = name(field(data, 'token_input', path), `${path}.token_input`);
  const stateInputs = names(field(data, 'state_inputs', path), `${path}.state_inputs`);
  const logitsOutput = name(field(data, 'logits_output', path), `${path}.logits_output`);
  const stateOutputs = names(field(data, 'state_outputs', path), `${path}.state_outputs`);
  const [nextToken, nextLogprob] = ['next_token_output', 'next_logprob_output']
    .map((key) => (data[key] == null ? null : name(data[key], `${path}.${key}`)));
  if ((nextToken === null) !== (nextLogprob === null)) throw fail(path, 'names next_token_output or next_logprob_output without the other');
  distinct([tokenInput, ...stateInputs], `${path} inputs`);
  distinct([logitsOutput, ...stateOutputs, ...(nextToken ? [nextToken, nextLogprob] : [])], `${path} outputs`);
  return { ...common, tokenInput, stateInputs, logitsOutput, stateOutputs, nextTokenOutput: nextToken, nextLogprobOutput: nextLogprob };
}

function decodingBlock(data) {
  if (!isObject(data)) throw new BundleError(`decoding must be an object, got ${pythonType(data)}`);
  const values = {};
  for (const [key, value] of Object.entries(data)) {
    const mapped = has(LEGACY_DECODING_KEYS, key) ? LEGACY_DECODING_KEYS[key] : key;
    if (mapped === null) continue;
    if (!DECODING_FIELDS.includes(mapped)) throw new BundleError(`decoding: unknown option ${pythonRepr(key)} (known: ${DECODING_FIELDS.join(', ')})`);
    values[mapped] = value;
  }
  return values;
}

/** @typedef {{pad: number, start: number, end: number, unk: number}} SpecialTokens */

/**
 * @typedef {object} Manifest
 * @property {string[]} vocab
 * @property {SpecialTokens} specialTokens the ids of <pad> <start> <end> <unk> in vocab, as the manifest states them
 * @property {number} maxLength
 * @property {import('./preprocess.js').PreprocessSpec} preprocess
 * @property {ReturnType<typeof encoderGraph>} encoder
 * @property {ReturnType<typeof decoderGraph>} decoder
 * @property {string} precision
 * @property {string} graphFormat
 * @property {string} cell how the graphs compute the recurrent cell: operator or matmul (information; both run alike)
 * @property {import('./decoding.js').DecodingOptions} decoding the bundle's default options
 */

/**
 * check_manifest: a parsed capkit.json, every field checked once. Throws BundleError, one line.
 * @param {any} data @param {import('./errors.js').Limits} [limits] @returns {Manifest}
 */
export function checkManifest(data, limits = DEFAULT_LIMITS) {
  if (!isObject(data)) throw fail(MANIFEST_NAME, `must be a JSON object, got ${jsonType(data)}`);
  if (!depthOk(data, MAX_MANIFEST_DEPTH)) throw fail(MANIFEST_NAME, `nested deeper than ${MAX_MANIFEST_DEPTH} levels`);
  const version = field(data, 'format_version', '');
  if (!isInt(version) || version !== FORMAT_VERSION) {
    throw fail('format_version', `must be the integer ${FORMAT_VERSION} (the version this capkit reads), got ${show(version)}`);
  }
  const vocab = vocabulary(field(data, 'vocab', ''), limits);
  const special = specialTokens(field(data, 'special_tokens', ''), vocab);
  const maxLength = int(field(data, 'max_length', ''), 'max_length', limits, 'max_length');
  const preprocess = preprocessSpec(field(data, 'preprocess', ''));
  int(preprocess.resize, 'preprocess.resize', limits, 'max_resize');
  int(preprocess.crop, 'preprocess.crop', limits, 'max_crop');
  const graphs = object(field(data, 'graphs', ''), 'graphs');
  const encoder = encoderGraph(field(graphs, 'encoder', 'graphs'));
  const decoder = decoderGraph(field(graphs, 'decoder_step', 'graphs'));
  const counts = [encoder.stateOutputs.length, decoder.stateInputs.length, decoder.stateOutputs.length];
  if (new Set(counts).size !== 1) {
    throw fail('graphs', `the encoder's state_outputs (${counts[0]}), the decoder_step's state_inputs (${counts[1]}) and state_outputs (${counts[2]}) differ in number`);
  }
  const precision = get(data, 'precision', 'fp32');
  if (typeof precision !== 'string' || !PRECISIONS.includes(precision)) throw fail('precision', `must be one of ${PRECISIONS.join(', ')}, got ${show(precision)}`);
  const graphFormat = get(data, 'graph_format', 'onnx'); // absent in bundles written before ORT-format bundles
  if (typeof graphFormat !== 'string' || !GRAPH_FORMATS.includes(graphFormat)) throw fail('graph_format', `must be one of ${GRAPH_FORMATS.join(', ')}, got ${show(graphFormat)}`);
  const cell = get(data, 'cell', 'operator'); // absent in bundles written before matmul-cell exports
  if (typeof cell !== 'string' || !RECURRENT_CELLS.includes(cell)) throw fail('cell', `must be one of ${RECURRENT_CELLS.join(', ')}, got ${show(cell)}`);
  object(get(data, 'model', {}), 'model');
  object(get(data, 'provenance', {}), 'provenance');
  const given = decodingBlock(get(data, 'decoding', {}));
  for (const key of ['temperature', 'beam']) {
    if (key in given && given[key] === null) throw fail(`decoding.${key}`, 'must be a number, got null (leave it out for the default)');
  }
  let decoding;
  try {
    decoding = verifyOptions({ ...DEFAULT_OPTIONS, ...given, max_length: maxLength }, limits);
  } catch (e) {
    if (e instanceof NumberTooLargeError) throw fail('decoding', `a number is too large, got ${show(get(data, 'decoding', null))}`);
    if (e instanceof CapkitError) throw new BundleError(`decoding: ${e.message}`);
    throw e;
  }
  return { vocab, specialTokens: special, maxLength, preprocess, encoder, decoder, precision, graphFormat, cell, decoding };
}

/**
 * capkit.json's text -> the checked Manifest. The text is read as Python's json reads it (python-json.js):
 * 1.0 stays a float, 2**70 an exact integer, NaN a number.
 * @param {string} text @param {import('./errors.js').Limits} [limits]
 */
export function parseManifest(text, limits = DEFAULT_LIMITS) {
  let data;
  try {
    data = parsePythonJson(text);
  } catch (e) {
    throw fail(MANIFEST_NAME, `not a valid JSON manifest (${e.message})`);
  }
  return checkManifest(data, limits);
}
