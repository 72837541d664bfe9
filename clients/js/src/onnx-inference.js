// The Inference that decoding.js's loop calls (runtime/onnx_inference.py's OnnxInference): a bundle's two ONNX
// Runtime sessions, fed and read by the names capkit.json gives.

import { vocabMismatch } from './graph-checks.js';

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

/**
 * The Inference (encode, step, greedyStep, select) over a bundle's sessions.
 * @param {any} ort onnxruntime-node or -web @param {string} where how messages name the bundle
 * @param {import('./manifest.js').Manifest} manifest @param {any} encoder the encoder graph's session @param {any} decoder the step graph's
 */
export function onnxInference(ort, where, manifest, encoder, decoder) {
  const m = manifest;
  const crop = m.preprocess.crop;
  const enc = m.encoder;
  const dec = m.decoder;
  const vocab = m.vocab.length;
  const { nextTokenOutput: nextToken, nextLogprobOutput: nextLogprob } = dec; // the step graph's own greedy choice, if any
  // every output is fetched: onnxruntime-node 1.20 mislabels the outputs of a run that names a subset
  const feeds = (tokens, state) => {
    const feed = { [dec.tokenInput]: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [tokens.length]) };
    dec.stateInputs.forEach((n, i) => { feed[n] = state[i]; });
    return feed;
  };
  // a step, whose logits must be as wide as the vocabulary (checked at load where the graph declares the width)
  const run = async (tokens, state) => {
    const out = await decoder.run(feeds(tokens, state));
    const width = out[dec.logitsOutput].dims.at(-1);
    if (width !== vocab) throw vocabMismatch(where, m, width);
    return out;
  };
  return {
    encode: async (image) => {
      const out = await encoder.run({ [enc.imageInput]: new ort.Tensor('float32', image, [1, 3, crop, crop]) });
      return enc.stateOutputs.map((n) => out[n]);
    },
    step: async (tokens, state) => {
      const out = await run(tokens, state);
      return { logits: out[dec.logitsOutput].data, vocab, state: dec.stateOutputs.map((n) => out[n]) };
    },
    greedyStep: nextToken && nextLogprob ? async (tokens, state) => {
      const out = await run(tokens, state);
      return {
        tokens: Array.from(out[nextToken].data, Number),
        logprobs: Array.from(out[nextLogprob].data, Number),
        state: dec.stateOutputs.map((n) => out[n]),
      };
    } : null,
    select: (state, rows) => state.map((t) => selectRows(ort, t, rows)),
  };
}
