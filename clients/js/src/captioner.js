// The Captioner of runtime/captioner.py over ONNX Runtime's JavaScript API. The platform (node.js,
// browser.js) gives it the ort module, a way to read the bundle's files, sha256 and image decoding.

import { BundleError, CapkitError, DEFAULT_LIMITS, DecodingOptionsError } from './errors.js';
import { decode } from './decoding.js';
import { MANIFEST_NAME, parseManifest } from './manifest.js';
import { OPTION_NAMES, verifyOptions } from './options.js';
import { preprocessRgb } from './preprocess.js';

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
 * @property {(name: string) => Promise<Uint8Array>} readFile a file of the bundle, by its relative name
 * @property {(bytes: Uint8Array) => Promise<string>} sha256 hex digest
 * @property {(source: any, limits: object) => Promise<{image: import('./preprocess.js').RgbImage, name: string}>} decodeImage
 */

const ALIASES = { topK: 'top_k', topP: 'top_p', maxLength: 'max_length' };

/** Gathers batch rows (axis 1) of a [layers, batch, hidden] float32 tensor. */
function selectRows(ort, tensor, rows) {
  const [layers, batch, hidden] = tensor.dims;
  const src = tensor.data;
  const out = new Float32Array(layers * rows.length * hidden);
  for (let l = 0; l < layers; l++) {
    rows.forEach((r, i) => {
      out.set(src.subarray((l * batch + r) * hidden, (l * batch + r + 1) * hidden), (l * rows.length + i) * hidden);
    });
  }
  return new ort.Tensor('float32', out, [layers, rows.length, hidden]);
}

export class Captioner {
  /**
   * Loads a bundle: reads capkit.json (its schema checked), checks each graph's sha256 and builds
   * the two ONNX Runtime sessions. Use the platform's ``Captioner.create`` (node.js, browser.js).
   * @param {string} where how messages name the bundle
   * @param {Platform} platform
   * @param {{limits?: object, sessionOptions?: object}} [settings]
   */
  static async load(where, platform, { limits = DEFAULT_LIMITS, sessionOptions = {} } = {}) {
    const self = new this();
    self.where = where;
    self.platform = platform;
    self.limits = { ...DEFAULT_LIMITS, ...limits };
    const manifestBytes = await platform.readFile(MANIFEST_NAME, self.limits.max_manifest_bytes);
    let text;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(manifestBytes);
    } catch {
      throw new BundleError(`${where}: ${MANIFEST_NAME}: not a manifest, not UTF-8 text`);
    }
    try {
      self.manifest = parseManifest(text, self.limits);
    } catch (e) {
      if (e instanceof CapkitError) throw new BundleError(`${where}: ${e.message}`);
      throw e;
    }
    const m = self.manifest;
    if (m.graphFormat !== 'onnx') throw new BundleError(`${where}: graph_format ${m.graphFormat} is not read by capkit-js (export an onnx bundle)`);
    const files = {};
    for (const graph of [m.encoder, m.decoder]) {
      const bytes = await platform.readFile(graph.file);
      const actual = await platform.sha256(bytes);
      if (actual !== graph.sha256) {
        throw new BundleError(`${where}: ${graph.file} has sha256 ${actual.slice(0, 12)}..., the manifest says ${graph.sha256.slice(0, 12)}...`);
      }
      files[graph.file] = bytes;
    }
    const options = { executionProviders: ['cpu'], graphOptimizationLevel: 'all', ...sessionOptions };
    const open = async (graph, inputs, outputs) => {
      let session;
      try {
        session = await platform.ort.InferenceSession.create(files[graph.file], options);
      } catch (e) {
        throw new BundleError(`${where}: ${graph.file} is not a graph ONNX Runtime can load (${String(e.message || e).split('\n')[0]})`);
      }
      for (const [kind, wanted, have] of [['input', inputs, session.inputNames], ['output', outputs, session.outputNames]]) {
        const missing = wanted.find((n) => !have.includes(n));
        if (missing) throw new BundleError(`${where}: ${graph.file} has no ${kind} ${JSON.stringify(missing)} (the manifest names it)`);
      }
      return session;
    };
    const enc = m.encoder;
    const dec = m.decoder;
    self.encoder = await open(enc, [enc.imageInput], enc.stateOutputs);
    self.decoder = await open(dec, [dec.tokenInput, ...dec.stateInputs],
      [dec.logitsOutput, ...dec.stateOutputs, ...(dec.nextTokenOutput ? [dec.nextTokenOutput, dec.nextLogprobOutput] : [])]);
    self.defaults = m.decoding;
    return self;
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
   * option (checked first) or an unreadable image.
   * @param {any} image @param {Record<string, any>} [options] @returns {Promise<Caption>}
   */
  async caption(image, options = {}) {
    const checked = this.options(options);
    const pixels = await this.preprocess(image);
    return this.captionPixels(pixels, checked);
  }

  /** Preprocessed pixels (float32 3 x crop x crop) -> Caption. */
  async captionPixels(pixels, options = this.defaults) {
    const result = await decode(this.inference(), pixels, options, { startId: this.manifest.specialTokens.start, endId: this.manifest.specialTokens.end });
    return { text: this.text(result.tokens), tokens: result.tokens, logprob: result.logprob, finished: result.finished };
  }

  /** The Inference the decoding loop calls (encode, step, greedyStep, select). */
  inference() {
    const { ort } = this.platform;
    const m = this.manifest;
    const crop = m.preprocess.crop;
    const enc = m.encoder;
    const dec = m.decoder;
    const vocab = m.vocab.length;
    // every output is fetched: onnxruntime-node 1.20 mislabels the outputs of a run that names a subset
    const feeds = (tokens, state) => {
      const feed = { [dec.tokenInput]: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [tokens.length]) };
      dec.stateInputs.forEach((n, i) => { feed[n] = state[i]; });
      return feed;
    };
    return {
      encode: async (image) => {
        const out = await this.encoder.run({ [enc.imageInput]: new ort.Tensor('float32', image, [1, 3, crop, crop]) });
        return enc.stateOutputs.map((n) => out[n]);
      },
      step: async (tokens, state) => {
        const out = await this.decoder.run(feeds(tokens, state));
        return { logits: out[dec.logitsOutput].data, vocab, state: dec.stateOutputs.map((n) => out[n]) };
      },
      greedyStep: dec.nextTokenOutput ? async (tokens, state) => {
        const out = await this.decoder.run(feeds(tokens, state));
        return {
          tokens: Array.from(out[dec.nextTokenOutput].data, Number),
          logprobs: Array.from(out[dec.nextLogprobOutput].data, Number),
          state: dec.stateOutputs.map((n) => out[n]),
        };
      } : null,
      select: (state, rows) => state.map((t) => selectRows(ort, t, rows)),
    };
  }
}
