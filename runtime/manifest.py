"""The manifest, ``capkit.json``: its schema, checked field by field (:func:`check_manifest`), and the
dataclasses it becomes (:class:`Manifest`, :class:`EncoderGraph`, :class:`DecoderStepGraph`).

The manifest names the graphs, maps the logical roles (image, token, state, logits) to tensor
names, and holds the vocabulary, the special token ids, the preprocessing spec and the default
decoding options. Reading it from a folder, and the folder's files, is :mod:`capkit.runtime.bundle`;
docs/bundle.md describes the format for readers who write their own loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional

from capkit.runtime.decoding import DecodingOptions, verify_options
from capkit.runtime.errors import CapkitError, is_int
from capkit.runtime.limits import DEFAULT_LIMITS, Limits
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

FORMAT_VERSION = 1  # the manifest format this capkit reads and writes
MANIFEST_NAME = "capkit.json"  # the manifest's file name in a bundle folder


class BundleError(CapkitError):
    """A bundle that cannot be used; the message names the folder and the problem in one line."""


# -- The manifest's schema ------------------------------------------------------------------------
# Manifest.from_dict checks every field once, before anything is built from it; a problem raises
# BundleError("<field path>: <problem>") and load_bundle puts the folder in front.

MANIFEST_PRECISIONS = ("fp32", "fp16", "int8")  # what a manifest's `precision` may say the graphs compute in
GRAPH_FORMATS = ("onnx", "ort")  # the graphs' file format: ONNX protobuf, or ONNX Runtime's ORT format (flatbuffers)
# How both graphs compute the recurrent cell: "operator", the ONNX LSTM/GRU/RNN operator (what every bundle
# written before the field holds), or "matmul", plain MatMul/Add/Sigmoid/Tanh nodes (capkit export --cell).
# Information for readers: a runtime runs either form the same way.
RECURRENT_CELLS = ("operator", "matmul")
MAX_MANIFEST_DEPTH = 64  # nesting of arrays and objects; capkit writes 4 levels
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # control characters and lone surrogates
_NOT_A_WORD = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # ... and white space, which splits captions
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlong, _short.maxlevel = 60, 60, 40, 3
JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
              (dict, "object"), (type(None), "null"))


def _show(value: Any) -> str:
    """A value for a message, bounded in length: JSON's spelling for true, false and null."""
    return json.dumps(value) if value is None or isinstance(value, bool) else _short.repr(value)


def _json_type(value: Any) -> str:
    return next((name for kind, name in JSON_TYPES if isinstance(value, kind)), type(value).__name__)


def _fail(path: str, problem: str) -> BundleError:
    return BundleError(f"{path}: {problem}")




def _field(data: dict[str, Any], key: str, path: str) -> Any:
    if key not in data:
        raise _fail(f"{path}.{key}" if path else key, "missing")
    return data[key]


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, f"must be an object, got {_json_type(value)} {_show(value)}")
    return value


def _int(value: Any, path: str, limits: Limits, limit: str) -> int:
    """An integer in [1, limits.<limit>]."""
    if not is_int(value) or value < 1:
        raise _fail(path, f"must be an integer >= 1, got {_show(value)}")
    bound = getattr(limits, limit)
    if value > bound:
        raise _fail(path, f"{_show(value)} is over the limit of {bound:g} (Limits.{limit}; raise it to allow more)")
    return value


def _name(value: Any, path: str) -> str:
    """A tensor name: a non-empty string without control characters."""
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        raise _fail(path, f"must be a non-empty name without control characters, got {_show(value)}")
    return value


def _names(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(path, f"must be a non-empty array of names, got {_json_type(value)} {_show(value)}")
    return tuple(_name(v, f"{path}[{i}]") for i, v in enumerate(value))


def _file_name(value: Any, path: str) -> str:
    """A graph's file: a relative name inside the bundle (links are followed and checked at load, by _inside)."""
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        raise _fail(path, f"must be a non-empty file name without control characters, got {_show(value)}")
    for flavour in (PurePosixPath(value), PureWindowsPath(value)):
        if flavour.is_absolute() or flavour.drive or flavour.root or ".." in flavour.parts:
            raise _fail(path, f"{_show(value)} must be a plain name inside the bundle")
    return value


def _distinct(names: list[str], path: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise _fail(path, f"tensor name {_show(name)} is used twice")
        seen.add(name)


def _depth_ok(value: Any, most: int) -> bool:
    """Whether arrays and objects nest at most ``most`` levels (iteratively: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (list, dict)):
                if depth + 1 > most:
                    return False
                stack.append((child, depth + 1))
    return True


def _vocabulary(value: Any, limits: Limits) -> Vocabulary:
    if not isinstance(value, list):
        raise _fail("vocab", f"must be an array of words, got {_json_type(value)} {_show(value)}")
    if len(value) > limits.max_vocab_size:
        raise _fail("vocab", f"{len(value)} words is over the limit of {limits.max_vocab_size:g} "
                             "(Limits.max_vocab_size; raise it to allow more)")
    if tuple(value[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise _fail("vocab", f"must start with {', '.join(SPECIAL_TOKENS)}, got {_show(value[:len(SPECIAL_TOKENS)])}")
    seen: dict[str, int] = {}
    for i, word in enumerate(value):
        if not isinstance(word, str) or not word or _NOT_A_WORD.search(word):
            raise _fail(f"vocab[{i}]", f"must be a non-empty word without white space or control characters, "
                                       f"got {_show(word)}")
        if word in seen:
            raise _fail(f"vocab[{i}]", f"{_show(word)} repeats vocab[{seen[word]}]; words must be distinct")
        seen[word] = i
    return Vocabulary(tuple(value))


def _special_tokens(value: Any, vocab: Vocabulary) -> None:
    """The ids of <pad> <start> <end> <unk>: exactly the vocabulary's (integers inside it, in its order)."""
    expected = vocab.special_token_ids()
    _object(value, "special_tokens")
    for key, id_ in value.items():
        if key not in expected:
            raise _fail("special_tokens", f"unknown token {key[:40]!r} (known: {', '.join(expected)})")
        if not is_int(id_) or not 0 <= id_ < len(vocab):
            raise _fail(f"special_tokens.{key}", f"must be a token id in 0..{len(vocab) - 1}, got {_show(id_)}")
        if id_ != expected[key]:
            raise _fail(f"special_tokens.{key}", f"is {id_}, but the vocabulary has {vocab.words[expected[key]]} "
                                                 f"at {expected[key]}")
    missing = [key for key in expected if key not in value]
    if missing:
        raise _fail(f"special_tokens.{missing[0]}", "missing")


def _graph_common(data: Any, path: str) -> tuple[dict[str, Any], str, str]:
    data = _object(data, path)
    file = _file_name(_field(data, "file", path), f"{path}.file")
    sha256 = _field(data, "sha256", path)
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise _fail(f"{path}.sha256", f"must be 64 lower-case hex digits, got {_show(sha256)}")
    return data, file, sha256


def _encoder_graph(data: Any) -> EncoderGraph:
    path = "graphs.encoder"
    data, file, sha256 = _graph_common(data, path)
    image = _name(_field(data, "image_input", path), f"{path}.image_input")
    states = _names(_field(data, "state_outputs", path), f"{path}.state_outputs")
    _distinct(list(states), f"{path}.state_outputs")
    return EncoderGraph(file, sha256, image, states)


def _decoder_graph(data: Any) -> DecoderStepGraph:
    path = "graphs.decoder_step"
    data, file, sha256 = _graph_common(data, path)
    token = _name(_field(data, "token_input", path), f"{path}.token_input")
    state_inputs = _names(_field(data, "state_inputs", path), f"{path}.state_inputs")
    logits = _name(_field(data, "logits_output", path), f"{path}.logits_output")
    state_outputs = _names(_field(data, "state_outputs", path), f"{path}.state_outputs")
    greedy = [None if data.get(key) is None else _name(data[key], f"{path}.{key}")
              for key in ("next_token_output", "next_logprob_output")]
    if (greedy[0] is None) != (greedy[1] is None):
        raise _fail(path, "names next_token_output or next_logprob_output without the other")
    graph = DecoderStepGraph(file, sha256, token, state_inputs, logits, state_outputs, *greedy)
    _distinct([token, *state_inputs], f"{path} inputs")
    _distinct(graph.outputs, f"{path} outputs")
    return graph


def check_manifest(data: Any, limits: Limits = DEFAULT_LIMITS) -> "Manifest":
    """The Manifest of a parsed capkit.json after checking every field's type and range once.

    Raises BundleError("<field path>: <problem>"), one line. Unknown top-level keys are allowed
    (information for other readers); unknown keys inside ``preprocess``, ``decoding`` and
    ``special_tokens`` are refused, since they would change what a caption is.
    """
    if not isinstance(data, dict):
        raise _fail(MANIFEST_NAME, f"must be a JSON object, got {_json_type(data)}")
    if not _depth_ok(data, MAX_MANIFEST_DEPTH):
        raise _fail(MANIFEST_NAME, f"nested deeper than {MAX_MANIFEST_DEPTH} levels")
    version = _field(data, "format_version", "")
    if not is_int(version) or version != FORMAT_VERSION:
        raise _fail("format_version", f"must be the integer {FORMAT_VERSION} (the version this capkit reads), "
                                      f"got {_show(version)}")
    vocab = _vocabulary(_field(data, "vocab", ""), limits)
    _special_tokens(_field(data, "special_tokens", ""), vocab)
    max_length = _int(_field(data, "max_length", ""), "max_length", limits, "max_length")
    try:
        preprocess = PreprocessSpec.from_dict(_field(data, "preprocess", ""))
    except CapkitError as e:
        raise BundleError(str(e)) from None
    _int(preprocess.resize, "preprocess.resize", limits, "max_resize")
    _int(preprocess.crop, "preprocess.crop", limits, "max_crop")
    graphs = _object(_field(data, "graphs", ""), "graphs")
    encoder = _encoder_graph(_field(graphs, "encoder", "graphs"))
    decoder = _decoder_graph(_field(graphs, "decoder_step", "graphs"))
    counts = (len(encoder.state_outputs), len(decoder.state_inputs), len(decoder.state_outputs))
    if len(set(counts)) != 1:
        raise _fail("graphs", "the encoder's state_outputs ({}), the decoder_step's state_inputs ({}) and "
                              "state_outputs ({}) differ in number".format(*counts))
    precision = data.get("precision", "fp32")
    if not isinstance(precision, str) or precision not in MANIFEST_PRECISIONS:
        raise _fail("precision", f"must be one of {', '.join(MANIFEST_PRECISIONS)}, got {_show(precision)}")
    graph_format = data.get("graph_format", "onnx")  # absent in bundles written before ORT-format bundles
    if not isinstance(graph_format, str) or graph_format not in GRAPH_FORMATS:
        raise _fail("graph_format", f"must be one of {', '.join(GRAPH_FORMATS)}, got {_show(graph_format)}")
    cell = data.get("cell", "operator")  # absent in bundles written before matmul-cell exports
    if not isinstance(cell, str) or cell not in RECURRENT_CELLS:
        raise _fail("cell", f"must be one of {', '.join(RECURRENT_CELLS)}, got {_show(cell)}")
    model = _object(data.get("model", {}), "model")
    provenance = _object(data.get("provenance", {}), "provenance")
    decoding = decoding_from_dict(data.get("decoding", {}))
    for name in ("temperature", "beam"):  # the options that have no "none" (top_k, top_p, seed may be null)
        if getattr(decoding, name) is None:
            raise _fail(f"decoding.{name}", "must be a number, got null (leave it out for the default)")
    try:
        decoding = verify_options(dataclasses.replace(decoding, max_length=max_length), limits)
    except CapkitError as e:
        raise BundleError(f"decoding: {e}") from None
    except OverflowError:  # an integer beyond float's range where a number is expected
        raise BundleError(f"decoding: a number is too large, got {_show(data.get('decoding'))}") from None
    return Manifest(vocab=vocab, preprocess=preprocess, max_length=max_length, encoder=encoder, decoder=decoder,
                    precision=precision, model=model, provenance=provenance, decoding=decoding,
                    format_version=version, graph_format=graph_format, cell=cell)



@dataclass(frozen=True)
class EncoderGraph:
    file: str
    sha256: str
    image_input: str  # float32 (B, 3, H, W), normalised
    state_outputs: tuple[str, ...]  # each (layers, B, hidden); feed the decoder's state_inputs in order

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "inputs": [self.image_input],
                "outputs": list(self.state_outputs), "image_input": self.image_input,
                "state_outputs": list(self.state_outputs)}


@dataclass(frozen=True)
class DecoderStepGraph:
    file: str
    sha256: str
    token_input: str  # int64 (B,)
    state_inputs: tuple[str, ...]  # each (layers, B, hidden)
    logits_output: str  # float32 (B, V)
    state_outputs: tuple[str, ...]  # in the order of state_inputs
    # Optional (None in older bundles): the greedy choice computed inside the graph, so that a
    # greedy loop need not copy the logits out: argmax(logits) int64 (B,) and its log-softmax
    # float64 (B,). Both or neither.
    next_token_output: Optional[str] = None
    next_logprob_output: Optional[str] = None

    @property
    def greedy_outputs(self) -> Optional[tuple[str, str]]:
        """(next_token, next_logprob) output names, or None when the graph does not compute them."""
        if self.next_token_output is None or self.next_logprob_output is None:
            return None
        return self.next_token_output, self.next_logprob_output

    @property
    def outputs(self) -> list[str]:
        """Every output, in graph order."""
        return [self.logits_output, *self.state_outputs, *(self.greedy_outputs or ())]

    def to_dict(self) -> dict[str, Any]:
        data = {"file": self.file, "sha256": self.sha256, "inputs": [self.token_input, *self.state_inputs],
                "outputs": self.outputs, "token_input": self.token_input,
                "state_inputs": list(self.state_inputs), "logits_output": self.logits_output,
                "state_outputs": list(self.state_outputs)}
        if self.greedy_outputs is not None:
            data["next_token_output"], data["next_logprob_output"] = self.greedy_outputs
        return data


@dataclass(frozen=True)
class Manifest:
    vocab: Vocabulary
    preprocess: PreprocessSpec
    max_length: int  # default longest caption, in generated tokens
    encoder: EncoderGraph
    decoder: DecoderStepGraph
    precision: str = "fp32"  # fp32 | fp16 | int8: what the graphs compute in
    model: dict[str, Any] = field(default_factory=dict)  # the model's configuration (informative)
    provenance: dict[str, Any] = field(default_factory=dict)  # run, checkpoint, metrics, versions
    decoding: Optional[DecodingOptions] = None  # default decoding options (None: greedy); max_length is the one above
    format_version: int = FORMAT_VERSION
    graph_format: str = "onnx"  # onnx | ort: the format of both graph files (ort: load with session.load_model_format=ORT)
    cell: str = "operator"  # operator | matmul: how both graphs compute the recurrent cell (RECURRENT_CELLS)

    def __post_init__(self) -> None:
        decoding = self.decoding or DecodingOptions()
        object.__setattr__(self, "decoding", dataclasses.replace(decoding, max_length=self.max_length))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "precision": self.precision,
            "graph_format": self.graph_format,
            "cell": self.cell,
            "vocab": list(self.vocab.words),
            "special_tokens": self.vocab.special_token_ids(),
            "max_length": self.max_length,
            "preprocess": self.preprocess.to_dict(),
            "graphs": {"encoder": self.encoder.to_dict(), "decoder_step": self.decoder.to_dict()},
            "decoding": decoding_to_dict(self.decoding),
            "model": self.model,
            "provenance": self.provenance,
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Any, limits: Limits = DEFAULT_LIMITS) -> "Manifest":
        """A parsed capkit.json, every field checked once (:func:`check_manifest`); raises BundleError."""
        return check_manifest(data, limits)


# a manifest's `decoding` keys: every DecodingOptions field but max_length, which is top level
DECODING_FIELDS = tuple(f.name for f in dataclasses.fields(DecodingOptions) if f.name != "max_length")
LEGACY_DECODING_KEYS = {"beam_size": "beam", "max_length": None}  # written by capkit 0.1 exports; None: ignored


def decoding_to_dict(options: DecodingOptions) -> dict[str, Any]:
    """The manifest's ``decoding`` block: the default options that differ from none (max_length is top level)."""
    return {name: getattr(options, name) for name in DECODING_FIELDS if getattr(options, name) is not None}


def decoding_from_dict(data: dict[str, Any]) -> DecodingOptions:
    """The ``decoding`` block -> DecodingOptions (max_length set by the Manifest); unknown keys are refused."""
    if not isinstance(data, dict):
        raise BundleError(f"decoding must be an object, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        name = LEGACY_DECODING_KEYS.get(key, key)
        if key in LEGACY_DECODING_KEYS and name is None:
            continue
        if name not in DECODING_FIELDS:
            raise BundleError(f"decoding: unknown option {key!r} (known: {', '.join(DECODING_FIELDS)})")
        values[name] = value
    return DecodingOptions(**values)
