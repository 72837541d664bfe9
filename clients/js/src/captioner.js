// The Captioner of runtime/captioner.py over ONNX Runtime's JavaScript API. The platform (node.js,
// browser.js) gives it the ort module, a way to read the bundle's files, sha256 and image decoding.

import {
  BundleError, CapkitError, DEFAULT_LIMITS, DecodingOptionsError, checkLimit, formatG, oneLine, pythonRepr,
} from './errors.js';
import { decode } from './decoding.js';
import { checkGraphs } from './graph-checks.js';
import { MANIFEST_NAME, parseManifest } from './manifest.js';
import { onnxInference } from './onnx-inference.js';
import { externalDataFiles } from './onnx-io.js';
import { OPTION_NAMES, verifyOptions } from './options.js';
import { preprocessRgb } from './preprocess.js';
import { stopwatch, timed } from './timings.js';

/**
 * @typedef {object} Caption
 * @property {string} text the words, special tokens left out
 * @property {number[]} tokens generated ids, <start> and <end> left out
 * @property {number} logprob sum of the log-probabilities of the tokens, <end> included
 * @property {boolean} finished false when the caption hit max_length before <end>
 */

/**
 * @typedef {object} Platform
 * @property {any} ort onnxruntime-node or onnxruntime-web
 * @property {(name: string, maxBytes?: number) => Promise<Uint8Array>} readFile a file of the bundle, by its relative name;
 *   BundleError (Python's words) when the name leads outside the bundle, or the file is missing or not a regular file
 * @property {(name: string) => Promise<boolean>} isFile whether a name inside the bundle is a file (BundleError when it
 *   leads outside the bundle)
 * @property {(bytes: Uint8Array) => Promise<string>} sha256 hex digest
 * @property {(source: any, limits: Limits) => Promise<{image: import('./preprocess.js').RgbImage, name: string}>} decodeImage
 */

const ALIASES = { topK: 'top_k', topP: 'top_p', maxLength: 'max_length' };

/** @typedef {import('./manifest.js').Manifest} Manifest */
/** @typedef {import('./options.js').DecodingOptions} DecodingOptions */
/** @typedef {import('./errors.js').Limits} Limits */

/**
 * _check_threads (runtime/onnx_inference.py): ONNX Runtime's intra-op threads, null or undefined (its
 * default) or an integer from 1 to limits.max_threads; a CapkitError or LimitError with one line otherwise.
 * @param {unknown} threads @param {Partial<Limits>} [limits]
 */
export function checkThreads(threads, limits = DEFAULT_LIMITS) {
  if (threads == null) return;
  if (typeof threads !== 'number' || !Number.isInteger(threads) || threads < 1) {
    throw new CapkitError(`threads must be an integer >= 1, got ${pythonRepr(threads)}`);
  }
  checkLimit({ ...DEFAULT_LIMITS, ...limits }, 'max_threads', threads, 'threads');
}

/**
 * capkit.json of a bundle, read and checked (its schema, the limits).
 * @param {string} where @param {Platform} platform @param {Limits} limits @returns {Promise<Manifest>}
 */
async function readManifest(where, platform, limits) {
  const bytes = await platform.readFile(MANIFEST_NAME, limits.max_manifest_bytes);
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes); // a BOM stays, and JSON refuses it, as in Python
  } catch {
    throw new BundleError(`${where}: ${MANIFEST_NAME}: not a manifest, not UTF-8 text`);
  }
  try {
    return parseManifest(text, limits);
  } catch (e) {
    if (e instanceof CapkitError) throw new BundleError(`${where}: ${e.message}`);
    throw e;
  }
}

/** A bundle's file that is not there, in load_bundle's words (for the platforms). @param {string} where @param {string} name */
export const missingFile = (where, name) => new BundleError(name === MANIFEST_NAME ? `${where}: not a bundle, ${name} is missing` : `${where}: ${name} is missing`);

/** A bundle's file over ``maxBytes`` (capkit.json's limit is Limits.max_manifest_bytes). @param {string} where @param {string} name @param {number} maxBytes */
export const fileTooBig = (where, name, maxBytes) => new BundleError(`${where}: ${name} is over the limit of ${formatG(maxBytes)} bytes`
  + `${name === MANIFEST_NAME ? ' (Limits.max_manifest_bytes; raise it to allow more)' : ''}`);

const plainName = (/** @type {string} */ name) => name && !name.includes('\0') && !name.startsWith('/') && !name.split('/').includes('..');

/**
 * A graph's bytes, once their sha256 is the manifest's and the external-data files they name are files inside the
 * bundle (load_bundle's checks, in its order and words).
 * @param {string} where @param {Platform} platform @param {{file: string, sha256: string}} graph
 */
async function readGraph(where, platform, graph) {
  const bytes = await platform.readFile(graph.file);
  const actual = await platform.sha256(bytes);
  if (actual !== graph.sha256) {
    throw new BundleError(`${where}: ${graph.file} has sha256 ${actual.slice(0, 12)}..., the manifest says ${graph.sha256.slice(0, 12)}...`);
  }
  for (const name of externalDataFiles(bytes)) {
    if (!plainName(name)) throw new BundleError(`${where}: file name ${pythonRepr(name)} must be a plain name inside the bundle`);
    if (!(await platform.isFile(name))) throw new BundleError(`${where}: external data file ${pythonRepr(name)} of ${graph.file} is missing`);
  }
  return bytes;
}

/**
 * An ONNX Runtime session over a graph's bytes; ONNX Runtime's refusal becomes one BundleError line, as in Python.
 * @param {string} where @param {any} ort @param {string} file @param {Uint8Array} bytes @param {object} options
 */
async function openSession(where, ort, file, bytes, options) {
  try {
    return { session: await ort.InferenceSession.create(bytes, options), bytes };
  } catch (e) {
    const first = String(e?.message || e).trim().split('\n')[0];
    throw new BundleError(`${where.replace(/\/+$/, '')}/${file}: ONNX Runtime cannot load it (${first})`);
  }
}

/** A promise that resolves in a task of its own, after the events waiting (a MessageChannel: no timer clamping). */
const nextTask = () => new Promise((resolve) => {
  const { port1, port2 } = new MessageChannel();
  port1.onmessage = () => { port1.close(); resolve(undefined); };
  port2.postMessage(null);
});

export class Captioner {
  /**
   * Use the platform's ``Captioner.create`` (node.js, browser.js), which calls ``load``.
   * @param {string} where how messages name the bundle @param {Platform} platform @param {Limits} limits
   * @param {Manifest} manifest @param {any} encoder the encoder graph's session @param {any} decoder the decoder step's
   */
  constructor(where, platform, limits, manifest, encoder, decoder) {
    this.where = where;
    this.platform = platform;
    this.limits = limits;
    this.manifest = manifest;
    this.encoder = encoder;
    this.decoder = decoder;
    /** @type {DecodingOptions} the bundle's default options */
    this.defaults = manifest.decoding;
  }

  /**
   * Loads a bundle: reads capkit.json (its schema checked), checks each graph's sha256 and builds
   * the two ONNX Runtime sessions.
   * @param {string} where how messages name the bundle
   * @param {Platform} platform
   * @param {{limits?: Partial<Limits>, sessionOptions?: object}} [settings] limits: DEFAULT_LIMITS with some raised
   */
  static async load(where, platform, { limits = DEFAULT_LIMITS, sessionOptions = {} } = {}) {
    const allLimits = { ...DEFAULT_LIMITS, ...limits };
    const manifest = await readManifest(where, platform, allLimits);
    if (manifest.graphFormat !== 'onnx') {
      throw new BundleError(`${where}: graph_format ${manifest.graphFormat} is not read by capkit-js (export an onnx bundle)`);
    }
    const { encoder: enc, decoder: dec } = manifest;
    const [encBytes, decBytes] = [await readGraph(where, platform, enc), await readGraph(where, platform, dec)];
    // logSeverityLevel 4 (fatal only): ONNX Runtime's errors reach the caller as one capkit line, not also as its log
    const options = { executionProviders: ['cpu'], graphOptimizationLevel: 'all', logSeverityLevel: 4, ...sessionOptions };
    const encoder = await openSession(where, platform.ort, enc.file, encBytes, options);
    let decoder = null;
    try {
      decoder = await openSession(where, platform.ort, dec.file, decBytes, options);
      checkGraphs(where, manifest, encoder, decoder);
    } catch (e) { // a bundle refused after a session was built: its memory and threads go at once
      await Promise.all([encoder.session.release(), decoder?.session.release()]);
      throw e;
    }
    return new this(where, platform, allLimits, manifest, encoder.session, decoder.session);
  }

  /** Releases the ONNX Runtime sessions (their memory and threads); the Captioner cannot caption after it. */
  async release() {
    await Promise.all([this.encoder.release(), this.decoder.release()]);
  }

  /**
   * Runs the graphs on a blank image, greedily, for about `ms` milliseconds (at least once unless already aborted),
   * so that the captions after it find the engine ready: in the browser, V8 runs onnxruntime-web's WebAssembly on
   * its baseline compiler until it has optimised the functions that ran (docs/js.md, "Speed"), and the first
   * captions of a page take several times the later ones. `signal` (an AbortSignal) stops it after the caption
   * under way; await the promise before captioning. Resolves to the number of blank captions run.
   * @param {number} [ms] @param {{signal?: AbortSignal}} [settings] @returns {Promise<number>}
   */
  async warmUp(ms = 2000, { signal } = {}) {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) throw new CapkitError(`warm-up time must be a number of milliseconds >= 0, got ${pythonRepr(ms)}`);
    const crop = this.spec.crop;
    const blank = new Float32Array(3 * crop * crop); // (3, crop, crop) zeros
    const options = this.options({ temperature: 0 });
    const until = performance.now() + ms;
    let runs = 0;
    do {
      if (signal?.aborted) break;
      await this.captionPixels(blank, options, '<warm-up>');
      runs += 1;
      await nextTask(); // graph runs resolve as microtasks: without this the page could not even ask to stop
    } while (performance.now() < until);
    return runs;
  }

  /** The preprocessing spec of the bundle. */
  get spec() {
    return this.manifest.preprocess;
  }

  /**
   * Checked decoding options: each one given, else the bundle's default; a given temperature, top-k or
   * top-p replaces the default sampling as a whole (Captioner.options in Python).
   * @param {Record<string, any>} [given]
   */
  options(given = {}) {
    if (given === null || typeof given !== 'object') throw new DecodingOptionsError(`options must be an object, got ${typeof given}`);
    const named = {};
    for (const [key, value] of Object.entries(given)) {
      const name = ALIASES[key] || key;
      if (!OPTION_NAMES.includes(name)) throw new DecodingOptionsError(`unknown option ${JSON.stringify(key)} (known: ${OPTION_NAMES.join(', ')})`);
      if (value !== undefined && value !== null) named[name] = value;
    }
    let base = this.defaults;
    if (('temperature' in named || 'top_k' in named || 'top_p' in named) && !('beam' in named)) base = { ...base, beam: 1 };
    return verifyOptions({ ...base, ...named }, this.limits);
  }

  /** Decoded pixels -> float32 (3, crop, crop). */
  async preprocess(source) {
    const { image, name } = await this.platform.decodeImage(source, this.limits);
    return preprocessRgb(image, this.spec, name, this.limits);
  }

  /** The words of token ids up to <end>, special tokens left out (Vocabulary.decode). @param {number[]} tokens */
  text(tokens) {
    const { specialTokens, vocab } = this.manifest;
    const special = new Set(Object.values(specialTokens));
    const words = [];
    for (const t of tokens) {
      if (t === specialTokens.end) break;
      if (!special.has(t)) words.push(vocab[t]);
    }
    return words.join(' ');
  }

  /**
   * One image -> its Caption. Options: temperature, top_k (topK), top_p (topP), beam, max_length
   * (maxLength), seed; left out: the bundle's defaults. Throws a CapkitError with one line for a bad
   * option (checked first) or an unreadable image. `timings`: an object that gets where the time went (Timings).
   * @param {any} image @param {Record<string, any>} [options] @param {import('./timings.js').Timings|null} [timings] @returns {Promise<Caption>}
   */
  async caption(image, options = {}, timings = null) {
    const lap = stopwatch(timings);
    const checked = this.options(options);
    const { image: rgb, name } = await this.platform.decodeImage(image, this.limits);
    lap('decode_ms');
    const pixels = preprocessRgb(rgb, this.spec, name, this.limits);
    lap('preprocess_ms');
    const caption = await this.captionPixels(pixels, checked, name, timings);
    lap(null);
    return caption;
  }

  /**
   * Preprocessed pixels (float32 3 x crop x crop) -> Caption. ONNX Runtime failing on them is a CapkitError
   * "<name>: cannot be captioned: ..." in one line, as the Python Captioner reports an image it cannot caption;
   * logits of another width than the vocabulary's, where the graph leaves it open, are the bundle's BundleError.
   * @param {Float32Array} pixels @param {DecodingOptions} [options] @param {string} [name] the image, for messages
   * @param {import('./timings.js').Timings|null} [timings] gets the graphs' time (encoder_ms, steps_ms, steps) and the loop's (decoding_ms)
   */
  async captionPixels(pixels, options = this.defaults, name = '<pixels>', timings = null) {
    let result;
    const started = performance.now();
    try {
      result = await decode(timings ? timed(this.inference(), timings) : this.inference(), pixels, options, { startId: this.manifest.specialTokens.start, endId: this.manifest.specialTokens.end });
    } catch (e) {
      if (e instanceof BundleError) throw e;
      throw new CapkitError(`${name}: cannot be captioned: ${oneLine(e?.message || e)}`);
    }
    if (timings) timings.decoding_ms = performance.now() - started - timings.encoder_ms - timings.steps_ms;
    return { text: this.text(result.tokens), tokens: result.tokens, logprob: result.logprob, finished: result.finished };
  }

  /** The Inference the decoding loop calls (encode, step, greedyStep, select): onnx-inference.js over this bundle's sessions. */
  inference() {
    return onnxInference(this.platform.ort, this.where, this.manifest, this.encoder, this.decoder);
  }
}
