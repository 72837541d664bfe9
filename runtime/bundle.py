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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from capkit.runtime.decoding import DecodingOptions
from capkit.runtime.errors import CapkitError
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import Vocabulary

FORMAT_VERSION = 1
MANIFEST_NAME = "capkit.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
RUNS_DIR = Path("runs")  # training writes runs/<name>/ and points runs/latest at the newest
LATEST_RUN = RUNS_DIR / "latest"
DEFAULT_BUNDLE = LATEST_RUN / "bundle"  # where `capkit export` writes and `capkit caption` looks by default
MODEL_ENV = "CAPKIT_MODEL"  # overrides DEFAULT_BUNDLE for `capkit caption` and `Captioner()`


class BundleError(CapkitError):
    """A bundle that cannot be used; the message names the folder and the problem in one line."""


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

    def __post_init__(self) -> None:
        decoding = self.decoding or DecodingOptions()
        object.__setattr__(self, "decoding", dataclasses.replace(decoding, max_length=self.max_length))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "precision": self.precision,
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
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"unknown format_version {version!r} (this capkit reads {FORMAT_VERSION})")
        vocab = Vocabulary(tuple(data["vocab"]))
        if data["special_tokens"] != vocab.special_token_ids():
            raise BundleError(f"special_tokens {data['special_tokens']} do not match the vocabulary's")
        enc, dec = data["graphs"]["encoder"], data["graphs"]["decoder_step"]
        encoder = EncoderGraph(enc["file"], enc["sha256"], enc["image_input"], tuple(enc["state_outputs"]))
        decoder = DecoderStepGraph(dec["file"], dec["sha256"], dec["token_input"], tuple(dec["state_inputs"]),
                               dec["logits_output"], tuple(dec["state_outputs"]), dec.get("next_token_output"),
                               dec.get("next_logprob_output"))
        if (decoder.next_token_output is None) != (decoder.next_logprob_output is None):
            raise BundleError("decoder_step names next_token_output or next_logprob_output without the other")
        if len(encoder.state_outputs) != len(decoder.state_inputs) or len(decoder.state_inputs) != len(decoder.state_outputs):
            raise BundleError("the encoder's state outputs, the decoder's state inputs and outputs differ in number")
        return cls(vocab=vocab, preprocess=PreprocessSpec.from_dict(data["preprocess"]),
                   max_length=int(data["max_length"]), encoder=encoder, decoder=decoder,
                   precision=data.get("precision", "fp32"), model=data.get("model", {}),
                   provenance=data.get("provenance", {}),
                   decoding=decoding_from_dict(data.get("decoding", {})),
                   format_version=version)


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
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise BundleError(f"{folder}: file name {name!r} must be a plain name inside the bundle")
    path = (folder / name).resolve()
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
        while True:  # protobuf varint length
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

    def files(self) -> list[Path]:
        """Every file the graphs need: both graphs and the external-data files they name, if any."""
        files = []
        for path in (self.encoder_path, self.decoder_path):
            files += [path, *(_inside(self.folder, name) for name in _external_data_files(path))]
        return files

    def size_bytes(self) -> int:
        """Bytes of :meth:`files`: what an app ships (the manifest aside)."""
        return sum(path.stat().st_size for path in self.files())


def load_bundle(folder: Optional[str | os.PathLike] = None, verify: bool = True) -> Bundle:
    """Reads and checks a bundle folder: manifest, format version, file names, sha256 of each graph."""
    folder = Path(folder) if folder is not None else default_bundle()
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder (run `capkit export`, or pass --model)")
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: not a bundle, {MANIFEST_NAME} is missing")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: unreadable manifest ({e})") from None
    try:
        manifest = Manifest.from_dict(data)
    except BundleError as e:
        raise BundleError(f"{folder}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{manifest_path}: malformed manifest ({type(e).__name__}: {e})") from None
    bundle = Bundle(folder, manifest)
    for graph, path in ((manifest.encoder, bundle.encoder_path), (manifest.decoder, bundle.decoder_path)):
        if not path.is_file():
            raise BundleError(f"{folder}: {graph.file} is missing")
        if verify:
            actual, external = _digest(path, EXTERNAL_DATA_MARKER)  # one read for both checks
            if actual != graph.sha256:
                raise BundleError(f"{folder}: {graph.file} has sha256 {actual[:12]}..., the manifest says {graph.sha256[:12]}...")
            for name in _external_data_files(path) if external else ():
                if not _inside(folder, name).is_file():
                    raise BundleError(f"{folder}: external data file {name!r} of {graph.file} is missing")
    return bundle
