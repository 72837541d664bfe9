"""Writes the tiny bundle that both runtimes' hostile-manifest tests tamper with (clients/js/test/fixtures/):

- tiny-bundle/: capkit.json (written by capkit's own Manifest) and two ONNX graphs of a few kilobytes,
  with the tensor names, types and shapes that `capkit export` writes (image [batch, 3, 16, 16] float32;
  token [batch] int64; states h and c [1, batch, 8]; logits [batch, 12]; next_token, next_logprob);
- tiny-variants/: graphs that differ from those in one declared input, for the rows of the shared table
  (clients/js/test/fixtures/hostile_manifests.json) that replace a graph.

The graphs are built with onnx.helper from fixed weights (no training, no torch): an exported model is
tens of megabytes, and `node --test` has no Python to export one. Their captions mean nothing; both
runtimes must load them and caption with them (tests/test_manifest_contract.py checks both).

    python clients/js/tools/generate_tiny_bundle.py          # rewrites the files
    python clients/js/tools/generate_tiny_bundle.py --check  # exit 1 when a committed file is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]  # the repository root, i.e. the capkit package
if ROOT.name == "capkit" and str(ROOT.parent) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT.parent))  # this checkout's capkit, not another one installed

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from capkit.runtime.bundle import DECODER_FILE, ENCODER_FILE  # noqa: E402
from capkit.runtime.manifest import DecoderStepGraph, EncoderGraph, Manifest  # noqa: E402
from capkit.runtime.preprocess import PreprocessSpec  # noqa: E402
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary  # noqa: E402

FIXTURES = ROOT / "clients" / "js" / "test" / "fixtures"
BUNDLE = FIXTURES / "tiny-bundle"
VARIANTS = FIXTURES / "tiny-variants"
COMMAND = "python clients/js/tools/generate_tiny_bundle.py"
WORDS = ("a", "red", "blue", "circle", "square", "on", "white", "grey")
CROP, HIDDEN, OPSET, IR_VERSION = 16, 8, 17, 8  # IR 8: what onnxruntime-node 1.20 and Python's ONNX Runtime read


def weights(name: str, *shape: int, seed: float) -> onnx.TensorProto:
    """Fixed float32 weights (a sine pattern: the same bytes with any numpy)."""
    values = np.sin(np.arange(int(np.prod(shape)), dtype=np.float64) * 1.7 + seed).reshape(shape)
    return numpy_helper.from_array(values.astype(np.float32), name)


def axes(name: str, *values: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def model(name: str, nodes: list, inputs: list, outputs: list, initializers: list) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="capkit tiny bundle")
    onnx.checker.check_model(built)
    return built.SerializeToString()


def encoder(image_type: int = TensorProto.FLOAT, channels: int = 3, size: object = CROP, reshape: bool = False) -> bytes:
    """image (batch, channels, size, size) -> h, c (1, batch, HIDDEN): tanh of the pixels' channel means
    times a matrix. ``image_type``: the declared input type (cast to float inside); ``reshape``: go
    through a Reshape to (batch, 3 x CROP x CROP), which fails at run time on any other size."""
    height, width = (size, size) if not isinstance(size, tuple) else size
    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT)]
    if reshape:
        nodes += [helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),
                  helper.make_node("Reshape", ["flat", "image_shape"], ["square"]),
                  helper.make_node("ReduceMean", ["square"], ["means"], axes=[2, 3], keepdims=0)]
    else:
        nodes.append(helper.make_node("ReduceMean", ["pixels"], ["means"], axes=[2, 3], keepdims=0))
    for state, seed in (("h", 0.3), ("c", 1.1)):
        nodes += [helper.make_node("MatMul", ["means", f"w_{state}"], [f"{state}_mixed"]),
                  helper.make_node("Tanh", [f"{state}_mixed"], [f"{state}_row"]),
                  helper.make_node("Unsqueeze", [f"{state}_row", "axis0"], [state])]
    state_info = [helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, "batch", HIDDEN]) for s in ("h", "c")]
    initializers = [weights("w_h", channels, HIDDEN, seed=0.3), weights("w_c", channels, HIDDEN, seed=1.1), axes("axis0", 0)]
    if reshape:
        initializers += [axes("flat_shape", -1, 3 * CROP * CROP), axes("image_shape", -1, 3, CROP, CROP)]
    image = helper.make_tensor_value_info("image", image_type, ["batch", channels, height, width])
    return model("encoder", nodes, [image], state_info, initializers)


def decoder_step(token_type: int = TensorProto.INT64, width: object = None) -> bytes:
    """(token (batch,), h, c) -> logits (batch, V), h_next, c_next, and the greedy choice: next_token
    (argmax, int64) and next_logprob (its log-softmax, float64), as `capkit export` writes them.
    ``token_type``: the declared token input (cast to int64 inside); ``width``: the logits' declared width (V)."""
    vocab = len(SPECIAL_TOKENS) + len(WORDS)
    nodes = [helper.make_node("Cast", ["token"], ["token64"], to=TensorProto.INT64),
             helper.make_node("Gather", ["embedding", "token64"], ["embedded"], axis=0),
             helper.make_node("Squeeze", ["h", "axis0"], ["h_row"]),
             helper.make_node("Squeeze", ["c", "axis0"], ["c_row"]),
             helper.make_node("MatMul", ["h_row", "recurrent"], ["h_mixed"]),
             helper.make_node("Sum", ["embedded", "h_mixed", "c_row"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["h_new"]),
             helper.make_node("Add", ["c_row", "embedded"], ["c_pre"]),
             helper.make_node("Tanh", ["c_pre"], ["c_new"]),
             helper.make_node("MatMul", ["h_new", "out"], ["logits"]),
             helper.make_node("Unsqueeze", ["h_new", "axis0"], ["h_next"]),
             helper.make_node("Unsqueeze", ["c_new", "axis0"], ["c_next"]),
             helper.make_node("ArgMax", ["logits"], ["next_token"], axis=1, keepdims=0),
             helper.make_node("LogSoftmax", ["logits"], ["logprobs"], axis=1),
             helper.make_node("ReduceMax", ["logprobs"], ["best"], axes=[1], keepdims=0),
             helper.make_node("Cast", ["best"], ["next_logprob"], to=TensorProto.DOUBLE)]
    state = [1, "batch", HIDDEN]
    inputs = [helper.make_tensor_value_info("token", token_type, ["batch"]),
              *(helper.make_tensor_value_info(s, TensorProto.FLOAT, state) for s in ("h", "c"))]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", vocab if width is None else width]),
               *(helper.make_tensor_value_info(s, TensorProto.FLOAT, state) for s in ("h_next", "c_next")),
               helper.make_tensor_value_info("next_token", TensorProto.INT64, ["batch"]),
               helper.make_tensor_value_info("next_logprob", TensorProto.DOUBLE, ["batch"])]
    initializers = [weights("embedding", vocab, HIDDEN, seed=0.0), weights("recurrent", HIDDEN, HIDDEN, seed=2.0),
                    weights("out", HIDDEN, vocab, seed=0.7), axes("axis0", 0)]
    return model("decoder_step", nodes, inputs, outputs, initializers)


def manifest_text(encoder_bytes: bytes, decoder_bytes: bytes) -> str:
    """capkit.json for the graphs, as capkit's Manifest writes it."""
    import hashlib
    import json

    digest = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    manifest = Manifest(
        vocab=Vocabulary(SPECIAL_TOKENS + WORDS), preprocess=PreprocessSpec(resize=CROP, crop=CROP), max_length=8,
        encoder=EncoderGraph(ENCODER_FILE, digest(encoder_bytes), "image", ("h", "c")),
        decoder=DecoderStepGraph(DECODER_FILE, digest(decoder_bytes), "token", ("h", "c"), "logits",
                                 ("h_next", "c_next"), "next_token", "next_logprob"),
        model={"note": "fixed weights for tests, not a trained model"}, provenance={"written_by": COMMAND},
        cell="matmul")  # the graphs above compute their cell with MatMul and Tanh
    return json.dumps(manifest.to_dict(), indent=2) + "\n"


def outputs() -> dict[Path, bytes]:
    """Each generated file and the bytes it should hold now."""
    enc, dec = encoder(), decoder_step()
    return {
        BUNDLE / ENCODER_FILE: enc,
        BUNDLE / DECODER_FILE: dec,
        BUNDLE / "capkit.json": manifest_text(enc, dec).encode(),
        VARIANTS / "encoder-double.onnx": encoder(image_type=TensorProto.DOUBLE),
        VARIANTS / "encoder-4-channels.onnx": encoder(channels=4),
        VARIANTS / "encoder-any-size.onnx": encoder(size=("height", "width")),
        VARIANTS / "encoder-any-size-reshaped.onnx": encoder(size=("height", "width"), reshape=True),
        VARIANTS / "decoder_step-int32.onnx": decoder_step(token_type=TensorProto.INT32),
        VARIANTS / "decoder_step-any-width.onnx": decoder_step(width="vocab"),
    }


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    files = outputs()
    stale = [path for path, data in files.items() if not path.is_file() or path.read_bytes() != data]
    if check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path.relative_to(ROOT)}{'' if path in stale else ' (unchanged)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
