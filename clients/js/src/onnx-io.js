// What the Python runtime reads of an ONNX graph besides running it, read here from the graph's bytes:
// - each input's and output's declared type and shape (ONNX Runtime's NodeArg .type and .shape in Python),
//   which the manifest must agree with (runtime/onnx_inference.py _check_names);
// - the external-data files it names (runtime/bundle.py _external_data_files).
// onnxruntime-node and -web 1.20 give a session's input and output names only (their metadata arrives in
// 1.22), and the browser loads this folder as it is, without a bundler: so the few protobuf fields needed
// are walked by hand. The weights (GraphProto.initializer) are skipped by their length, never read.

const WIRE_VARINT = 0;
const WIRE_64 = 1;
const WIRE_LEN = 2;
const WIRE_32 = 5;

// TensorProto.DataType -> the element's name in ONNX Runtime's type strings ("tensor(float)")
const ELEMENT_TYPES = ['undefined', 'float', 'uint8', 'int8', 'uint16', 'int16', 'int32', 'int64', 'string', 'bool',
  'float16', 'double', 'uint32', 'uint64', 'complex64', 'complex128', 'bfloat16', 'float8e4m3fn', 'float8e4m3fnuz',
  'float8e5m2', 'float8e5m2fnuz', 'uint4', 'int4'];

/** @typedef {{type: string, shape: (number|bigint|string|null)[]}} ValueInfo a declared type and shape (null: unknown dim) */

/**
 * The fields of one protobuf message: [field number, wire type, value] (a varint as a BigInt, a
 * length-delimited field as its bytes). Throws RangeError on bytes that are not protobuf.
 * @param {Uint8Array} bytes @returns {Generator<[number, number, bigint|Uint8Array]>}
 */
function* fields(bytes) {
  let at = 0;
  const varint = () => {
    let value = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (at >= bytes.length || shift > 63n) throw new RangeError('a truncated varint');
      const byte = bytes[at++];
      value |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return value;
    }
  };
  while (at < bytes.length) {
    const key = Number(varint());
    const [number, wire] = [key >>> 3, key & 7];
    if (wire === WIRE_VARINT) yield [number, wire, varint()];
    else if (wire === WIRE_LEN) {
      const length = Number(varint());
      if (at + length > bytes.length) throw new RangeError('a truncated field');
      yield [number, wire, bytes.subarray(at, at + length)];
      at += length;
    } else if (wire === WIRE_64 || wire === WIRE_32) at += wire === WIRE_64 ? 8 : 4;
    else throw new RangeError(`wire type ${wire}`);
  }
}

/** The length-delimited fields numbered ``number`` of a message. @param {Uint8Array} bytes @param {number} number */
const messages = (bytes, number) => Array.from(fields(bytes)).filter(([n, w]) => n === number && w === WIRE_LEN)
  .map(([, , value]) => /** @type {Uint8Array} */ (value));

/** The last varint field numbered ``number`` (protobuf's rule for a repeated scalar), or null. */
function varintField(/** @type {Uint8Array} */ bytes, /** @type {number} */ number) {
  let found = null;
  for (const [n, w, value] of fields(bytes)) if (n === number && w === WIRE_VARINT) found = /** @type {bigint} */ (value);
  return found;
}

const text = (/** @type {Uint8Array} */ bytes) => new TextDecoder().decode(bytes);
const lastText = (/** @type {Uint8Array} */ bytes, /** @type {number} */ number) => {
  const found = messages(bytes, number);
  return found.length ? text(found[found.length - 1]) : '';
};
const elementName = (/** @type {bigint|null} */ code) => ELEMENT_TYPES[Number(code ?? 0n)] ?? `unknown(${code})`;

/** TypeProto -> ONNX Runtime's spelling of it (tensor(float), seq(tensor(int64)), map(int64,tensor(float)) ...). */
function typeName(/** @type {Uint8Array} */ bytes) {
  for (const [n, w, value] of fields(bytes)) {
    if (w !== WIRE_LEN) continue;
    const inner = /** @type {Uint8Array} */ (value);
    if (n === 1) return `tensor(${elementName(varintField(inner, 1))})`;
    if (n === 8) return `sparse_tensor(${elementName(varintField(inner, 1))})`;
    const element = messages(inner, n === 5 ? 2 : 1);
    const innerName = element.length ? typeName(element[0]) : 'undefined';
    if (n === 4) return `seq(${innerName})`;
    if (n === 9) return `optional(${innerName})`;
    if (n === 5) return `map(${elementName(varintField(inner, 1))},${innerName})`;
  }
  return 'undefined';
}

/** TypeProto -> the tensor's dims: an integer, a symbolic name, or null; [] when no shape is declared. */
function shape(/** @type {Uint8Array} */ typeBytes) {
  const tensor = messages(typeBytes, 1);
  const dims = tensor.length ? messages(tensor[0], 2).flatMap((s) => messages(s, 1)) : [];
  return dims.map((dim) => {
    const value = varintField(dim, 1);
    if (value !== null) {
      const signed = BigInt.asIntN(64, value);
      return Number.isSafeInteger(Number(signed)) ? Number(signed) : signed;
    }
    return lastText(dim, 2) || null;
  });
}

/**
 * The declared inputs and outputs of an ONNX model, by name; null when the bytes are not an ONNX protobuf.
 * @param {Uint8Array} bytes @returns {{inputs: Map<string, ValueInfo>, outputs: Map<string, ValueInfo>} | null}
 */
export function graphIO(bytes) {
  try {
    const infos = (/** @type {Uint8Array} */ graph, /** @type {number} */ number) => new Map(messages(graph, number).map((info) => {
      const types = messages(info, 2);
      const type = types.length ? types[types.length - 1] : new Uint8Array();
      return [lastText(info, 1), { type: typeName(type), shape: shape(type) }];
    }));
    const graphs = messages(bytes, 7);
    if (!graphs.length) return null;
    return { inputs: new Map(graphs.flatMap((g) => [...infos(g, 11)])), outputs: new Map(graphs.flatMap((g) => [...infos(g, 12)])) };
  } catch (e) {
    if (e instanceof RangeError) return null;
    throw e;
  }
}

const EXTERNAL_DATA_MARKER = Uint8Array.from([0x0a, 0x08, ...new TextEncoder().encode('location'), 0x12]);

/**
 * The external-data files a graph names, as runtime/bundle.py _external_data_files finds them: each
 * ``location`` entry found by a scan of the bytes (no parse), its name UTF-8 with bad bytes replaced; sorted.
 * @param {Uint8Array} bytes @returns {string[]}
 */
export function externalDataFiles(bytes) {
  const names = new Set();
  const marker = EXTERNAL_DATA_MARKER;
  const find = (/** @type {number} */ from) => {
    for (let i = bytes.indexOf(marker[0], from); i >= 0; i = bytes.indexOf(marker[0], i + 1)) {
      if (marker.every((b, k) => bytes[i + k] === b)) return i;
    }
    return -1;
  };
  for (let i = find(0); i >= 0;) {
    let j = i + marker.length;
    let length = 0;
    for (let scale = 1; j < bytes.length; scale *= 128) { // a protobuf varint; a truncated one ends the scan
      const byte = bytes[j++];
      length += (byte & 0x7f) * scale;
      if (!(byte & 0x80)) break;
    }
    names.add(new TextDecoder().decode(bytes.subarray(j, j + length)));
    i = find(Math.min(j + length, bytes.length));
  }
  return [...names].sort();
}
