// The manifest must agree with its graphs, as runtime/onnx_inference.py _check_names checks it when the
// sessions are built, with the same one-line messages: a clear error instead of a failing run or a wrong
// caption. Tensor names come from the sessions; declared types and shapes from the graphs' bytes (onnx-io.js).

import { BundleError, pythonRepr } from './errors.js';
import { graphIO } from './onnx-io.js';

/** @typedef {import('./manifest.js').Manifest} Manifest */
/** @typedef {{session: any, bytes: Uint8Array}} OpenGraph an ONNX Runtime session and the bytes it was built from */

const isStatic = (/** @type {unknown} */ dim) => typeof dim === 'number' || typeof dim === 'bigint';
const dimText = (/** @type {unknown} */ dim) => (dim === null ? 'None' : String(dim)); // str() of a NodeArg dim

/** Every output the decoder step graph must have, in graph order (DecoderStepGraph.outputs). @param {Manifest['decoder']} dec */
const decoderOutputs = (dec) => [dec.logitsOutput, ...dec.stateOutputs,
  ...(dec.nextTokenOutput && dec.nextLogprobOutput ? [dec.nextTokenOutput, dec.nextLogprobOutput] : [])];

/** The words of a message that the logits are not as wide as the vocabulary. */
export function vocabMismatch(/** @type {string} */ where, /** @type {Manifest} */ manifest, /** @type {unknown} */ width) {
  const dec = manifest.decoder;
  return new BundleError(`${where}: vocab has ${manifest.vocab.length} words, but ${dec.file} output ${pythonRepr(dec.logitsOutput)} `
    + `scores ${width} tokens; they must agree`);
}

/** Every tensor the manifest names exists in its graph (inputs, then outputs; the encoder first). */
function checkNames(/** @type {string} */ where, /** @type {Manifest} */ manifest, /** @type {OpenGraph} */ encoder, /** @type {OpenGraph} */ decoder) {
  const { encoder: enc, decoder: dec } = manifest;
  for (const [{ session }, graph, inputs, outputs] of /** @type {const} */ ([
    [encoder, enc, [enc.imageInput], enc.stateOutputs], [decoder, dec, [dec.tokenInput, ...dec.stateInputs], decoderOutputs(dec)]])) {
    const missing = [...inputs.filter((n) => !session.inputNames.includes(n)), ...outputs.filter((n) => !session.outputNames.includes(n))];
    if (missing.length) {
      throw new BundleError(`${where}: ${graph.file} has no tensor named ${missing.join(', ')} (the manifest and the graph disagree)`);
    }
  }
}

/**
 * _check_names: the tensor names are the graphs' own, the image input is float and the token input int64, the
 * image input, where its size is static, is [batch, 3, crop, crop], and the logits, where static, are as wide as
 * the vocabulary. Throws BundleError naming the bundle (``where``), the graph and the disagreement.
 * @param {string} where @param {Manifest} manifest @param {OpenGraph} encoder @param {OpenGraph} decoder
 */
export function checkGraphs(where, manifest, encoder, decoder) {
  checkNames(where, manifest, encoder, decoder);
  const { encoder: enc, decoder: dec, preprocess: { crop } } = manifest;
  const [encIO, decIO] = [graphIO(encoder.bytes), graphIO(decoder.bytes)]; // null: nothing declared to compare
  for (const [io, graph, name, expected] of /** @type {const} */ ([
    [encIO, enc, enc.imageInput, 'tensor(float)'], [decIO, dec, dec.tokenInput, 'tensor(int64)']])) {
    const type = io?.inputs.get(name)?.type;
    if (type !== undefined && type !== expected) {
      throw new BundleError(`${where}: ${graph.file} input ${pythonRepr(name)} is ${type}, the bundle format says ${expected}`);
    }
  }
  const shape = encIO?.inputs.get(enc.imageInput)?.shape ?? [];
  if (shape.length && (shape.length !== 4 || (isStatic(shape[1]) && Number(shape[1]) !== 3))) {
    throw new BundleError(`${where}: ${enc.file} input ${pythonRepr(enc.imageInput)} has shape ${pythonRepr(shape)}, `
      + 'the bundle format says [batch, 3, crop, crop]');
  }
  if (shape.length && shape.slice(2).some((d) => isStatic(d) && Number(d) !== crop)) {
    throw new BundleError(`${where}: preprocess.crop is ${crop}, but ${enc.file} input ${pythonRepr(enc.imageInput)} takes `
      + `${dimText(shape[2])} x ${dimText(shape[3])} images; they must agree`);
  }
  const logits = decIO?.outputs.get(dec.logitsOutput)?.shape ?? [];
  const width = logits.length ? logits[logits.length - 1] : null;
  if (isStatic(width) && Number(width) !== manifest.vocab.length) throw vocabMismatch(where, manifest, width);
}
