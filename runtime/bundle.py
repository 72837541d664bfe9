"""The bundle: a folder with two ONNX graphs and ``capkit.json``, the manifest that describes them.

The manifest names the graphs, maps the logical roles (image, token, state, logits) to tensor
names, and holds the vocabulary, the special token ids, the preprocessing spec and the default
decoding options. docs/bundle.md describes the format for readers who write their own loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import reprlib
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Optional

from capkit.runtime.decoding import DecodingOptions, verify_options
from capkit.runtime.errors import CapkitError
from capkit.runtime.limits import DEFAULT_LIMITS, Limits
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

FORMAT_VERSION = 1
MANIFEST_NAME = "capkit.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
ORT_ENCODER_FILE, ORT_DECODER_FILE = "encoder.ort", "decoder_step.ort"  # an ORT-format bundle's graphs
OPERATOR_CONFIG_FILE = "required_operators_and_types.config"  # an ORT-format bundle's operator list (for reduced builds)
RUNS_DIR = Path("runs")  # training writes runs/<name>/ and points runs/latest at the newest
LATEST_RUN = RUNS_DIR / "latest"
DEFAULT_BUNDLE = LATEST_RUN / "bundle"  # where `capkit export` writes and `capkit caption` looks by default
MODEL_ENV = "CAPKIT_MODEL"  # overrides DEFAULT_BUNDLE for `capkit caption` and `Captioner()`


class BundleError(CapkitError):
    """A bundle that cannot be used; the message names the folder and the problem in one line."""


# -- The manifest's schema ------------------------------------------------------------------------
# Manifest.from_dict checks every field once, before anything is built from it; a problem raises
# BundleError("<field path>: <problem>") and load_bundle puts the folder in front.

PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_FORMATS = ("onnx", "ort")  # the graphs' file format: ONNX protobuf, or ONNX Runtime's ORT format (flatbuffers)
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    if not _is_int(value) or value < 1:
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
        if not _is_int(id_) or not 0 <= id_ < len(vocab):
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
    if not _is_int(version) or version != FORMAT_VERSION:
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
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise _fail("precision", f"must be one of {', '.join(PRECISIONS)}, got {_show(precision)}")
    graph_format = data.get("graph_format", "onnx")  # absent in bundles written before ORT-format bundles
    if not isinstance(graph_format, str) or graph_format not in GRAPH_FORMATS:
        raise _fail("graph_format", f"must be one of {', '.join(GRAPH_FORMATS)}, got {_show(graph_format)}")
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
                    format_version=version, graph_format=graph_format)


def default_bundle() -> Path:
    return Path(os.environ.get(MODEL_ENV) or DEFAULT_BUNDLE)


EXTERNAL_DATA_MARKER = b"\n\x08location\x12"  # how an ONNX file names an external-data file (see below)


def _digest(path: Path, marker: bytes = b"") -> tuple[str, bool]:
    """The hex sha256 of a file and whether ``marker`` occurs in it, in one pass over one reused
    buffer (no new 1 MB object per chunk, no second read of a ~100 MB graph)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    found, tail, overlap = False, b"", max(len(marker) - 1, 0)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
            if marker and not found:  # also across the boundary with the previous chunk
                found = buffer.find(marker, 0, size) >= 0 or (tail + bytes(view[:min(overlap, size)])).find(marker) >= 0
                tail = bytes(view[max(0, size - overlap):size])
    return digest.hexdigest(), found


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return _digest(path)[0]


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

    def __post_init__(self) -> None:
        decoding = self.decoding or DecodingOptions()
        object.__setattr__(self, "decoding", dataclasses.replace(decoding, max_length=self.max_length))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "precision": self.precision,
            "graph_format": self.graph_format,
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


DECODING_FIELDS = ("temperature", "top_k", "top_p", "beam", "seed")  # a manifest's `decoding` keys (max_length: top level)
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


def _inside(folder: Path, name: str) -> Path:
    """``folder/name``, refusing absolute paths, ``..`` and links that lead outside the folder."""
    if not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise BundleError(f"{folder}: file name {name!r} must be a plain name inside the bundle")
    try:
        path = (folder / name).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise BundleError(f"{folder}: {name!r} cannot be resolved ({_os_reason(e)})") from None
    if folder.resolve() not in path.parents:
        raise BundleError(f"{folder}: {name!r} points outside the bundle")
    return path


def _external_data_files(onnx_path: Path) -> list[str]:
    """Names of the external-data files an ONNX model refers to, read without the onnx package.

    External data is recorded as ``StringStringEntryProto`` entries with key ``location``; a scan
    of the protobuf bytes for that key finds them without parsing the graph.
    """
    data = onnx_path.read_bytes()
    names, marker, start = [], EXTERNAL_DATA_MARKER, 0
    while (i := data.find(marker, start)) >= 0:
        j = i + len(marker)
        length, shift = 0, 0
        while j < len(data):  # protobuf varint length (a truncated one ends the scan; ONNX Runtime refuses the file)
            byte = data[j]
            length |= (byte & 0x7F) << shift
            j += 1
            shift += 7
            if not byte & 0x80:
                break
        names.append(data[j:j + length].decode("utf-8", "replace"))
        start = j + length
    return sorted(set(names))


@dataclass(frozen=True)
class Bundle:
    folder: Path
    manifest: Manifest

    @property
    def encoder_path(self) -> Path:
        return _inside(self.folder, self.manifest.encoder.file)

    @property
    def decoder_path(self) -> Path:
        return _inside(self.folder, self.manifest.decoder.file)

    def named_files(self) -> dict[str, Path]:
        """The bundle's own files besides the manifest, by the names the manifest (and the graphs' external-data
        references) give them, each with its resolved path inside the folder: both graphs, their external-data
        files, and in an ORT-format bundle its operator config (:data:`OPERATOR_CONFIG_FILE`, an input of
        reduced ONNX Runtime builds, not needed at run time) where it is a file inside the folder."""
        files: dict[str, Path] = {}
        for name in (self.manifest.encoder.file, self.manifest.decoder.file):
            path = files[name] = _inside(self.folder, name)
            files.update((extra, _inside(self.folder, extra)) for extra in _external_data_files(path))
        if self.manifest.graph_format == "ort":
            try:
                config = _inside(self.folder, OPERATOR_CONFIG_FILE)
            except BundleError:  # a link leading outside: not the bundle's
                config = None
            if config is not None and config.is_file():
                files[OPERATOR_CONFIG_FILE] = config
        return files

    def graph_files(self) -> list[Path]:
        """Every file the graphs need: both graphs and the external-data files they name, if any."""
        return [path for name, path in self.named_files().items() if name != OPERATOR_CONFIG_FILE]

    def files(self) -> list[Path]:
        """:meth:`named_files`' paths."""
        return list(self.named_files().values())

    def size_bytes(self) -> int:
        """Bytes of :meth:`graph_files`: what an app ships (the manifest aside)."""
        return sum(path.stat().st_size for path in self.graph_files())


def _os_reason(error: BaseException) -> str:
    """The reason of an OSError without its file name (the message names the file already), one line."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return " ".join(reason.split())


def _stat(path: Path, folder: Path, what: str) -> Optional[os.stat_result]:
    """``os.stat(path)``: None when there is nothing there; BundleError when it cannot be read."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # a symlink loop, a path through a file, a NUL, ...
        raise BundleError(f"{folder}: {what} cannot be read ({_os_reason(e)})") from None


def read_manifest(folder: Path, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The parsed JSON of ``folder/capkit.json``: a regular file (a FIFO or a device is refused without
    opening it), at most ``limits.max_manifest_bytes``, UTF-8 JSON. Raises BundleError."""
    path = folder / MANIFEST_NAME
    info = _stat(path, folder, MANIFEST_NAME)
    if info is None:
        raise BundleError(f"{folder}: not a bundle, {MANIFEST_NAME} is missing")
    too_big = BundleError(f"{folder}: {MANIFEST_NAME} is over the limit of {limits.max_manifest_bytes:g} bytes "
                          "(Limits.max_manifest_bytes; raise it to allow more)")
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{folder}: {MANIFEST_NAME} is not a regular file")
    if info.st_size > limits.max_manifest_bytes:
        raise too_big
    try:  # O_NONBLOCK: a FIFO swapped in after the stat does not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BundleError(f"{folder}: {MANIFEST_NAME} is not a regular file")
            raw = f.read(int(limits.max_manifest_bytes) + 1)
    except OSError as e:
        raise BundleError(f"{folder}: {MANIFEST_NAME} cannot be read ({_os_reason(e)})") from None
    if len(raw) > limits.max_manifest_bytes:
        raise too_big
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{folder}: {MANIFEST_NAME}: not a manifest, not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise BundleError(f"{folder}: {MANIFEST_NAME}: not a usable manifest, JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        raise BundleError(f"{folder}: {MANIFEST_NAME}: not a valid JSON manifest ({' '.join(str(e).split())})") from None


def load_bundle(folder: Optional[str | os.PathLike] = None, verify: bool = True,
                limits: Limits = DEFAULT_LIMITS) -> Bundle:
    """Reads and checks a bundle folder: every manifest field (:func:`check_manifest`, within ``limits``),
    file names, and (``verify``) the sha256 of each graph and its external-data files."""
    folder = Path(folder) if folder is not None else default_bundle()
    info = _stat(folder, folder, "the bundle folder")
    if info is None:
        raise BundleError(f"{folder}: no such bundle folder (run `capkit export`, or pass --model)")
    if not stat.S_ISDIR(info.st_mode):
        raise BundleError(f"{folder}: not a bundle folder (a bundle is a folder with {MANIFEST_NAME} in it)")
    data = read_manifest(folder, limits)
    try:
        manifest = Manifest.from_dict(data, limits)
    except BundleError as e:
        raise BundleError(f"{folder}: {e}") from None
    bundle = Bundle(folder, manifest)
    for graph, path in ((manifest.encoder, bundle.encoder_path), (manifest.decoder, bundle.decoder_path)):
        info = _stat(path, folder, graph.file)
        if info is None:
            raise BundleError(f"{folder}: {graph.file} is missing")
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{folder}: {graph.file} is not a regular file")
        if verify:
            actual, external = _digest(path, EXTERNAL_DATA_MARKER)  # one read for both checks
            if actual != graph.sha256:
                raise BundleError(f"{folder}: {graph.file} has sha256 {actual[:12]}..., the manifest says {graph.sha256[:12]}...")
            for name in _external_data_files(path) if external else ():
                if not _inside(folder, name).is_file():
                    raise BundleError(f"{folder}: external data file {name!r} of {graph.file} is missing")
    return bundle
