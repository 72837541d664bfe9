"""The manifest's schema, checked once at load: hostile capkit.json files are refused with one line
naming the bundle and the field, never a traceback; and the manifest must agree with its graphs."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capkit.runtime import Captioner
from capkit.runtime.bundle import load_bundle, sha256_file
from capkit.runtime.decoding import DecodingOptions
from capkit.runtime.errors import CapkitError
from capkit.runtime.limits import Limits
from capkit.runtime.manifest import MANIFEST_NAME, BundleError, decoding_from_dict, decoding_to_dict
from capkit.runtime.onnx_inference import OnnxInference
from capkit.runtime.preprocess import PreprocessSpec

DELETE = object()  # a case's value: remove the field


@pytest.fixture(scope="module")
def source(export_kit):
    """The LSTM bundle of the export kit (greedy outputs, 28 words, 32 x 32 static image input)."""
    return export_kit.bundle("lstm")


@pytest.fixture(scope="module")
def manifest(source) -> dict[str, Any]:
    return json.loads((source.folder / MANIFEST_NAME).read_text())


def copy_graphs(source, folder: Path) -> Path:
    """The source bundle's files but its manifest, hard-linked (no test here writes into a graph: a
    tampered or replaced graph is unlinked first), else copied."""
    folder.mkdir(parents=True)
    for path in source.folder.iterdir():
        if path.is_file() and path.name != MANIFEST_NAME:
            try:
                os.link(path, folder / path.name)
            except OSError:
                shutil.copyfile(path, folder / path.name)
    return folder


def write(folder: Path, doc: Any) -> Path:
    (folder / MANIFEST_NAME).write_text(json.dumps(doc))
    return folder


def edited(doc: dict[str, Any], path: tuple, value: Any) -> Any:
    """A copy of ``doc`` with ``value`` (DELETE: nothing) at ``path``; () replaces the whole document."""
    if not path:
        return value
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    elif isinstance(parent, list) and path[-1] == len(parent):
        parent.append(value)
    else:
        parent[path[-1]] = value(doc) if callable(value) else value
    return doc


def assert_one_line(error: BaseException, folder: Path, *words: str) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{folder}: "), message
    for word in words:
        assert word in message, (word, message)


ENC, DEC = ("graphs", "encoder"), ("graphs", "decoder_step")
HOSTILE: list[tuple[str, tuple, Any, tuple[str, ...]]] = [
    # the document itself
    ("array", (), [1, 2], ("capkit.json", "object")),
    ("string", (), "a manifest", ("capkit.json", "object")),
    ("null", (), None, ("capkit.json", "object")),
    ("number", (), 1, ("capkit.json", "object")),
    # format_version: exactly the integer 1
    ("version-float", ("format_version",), 1.0, ("format_version", "1.0")),
    ("version-bool", ("format_version",), True, ("format_version", "true")),
    ("version-string", ("format_version",), "1", ("format_version",)),
    ("version-2", ("format_version",), 2, ("format_version", "2")),
    ("version-missing", ("format_version",), DELETE, ("format_version", "missing")),
    # vocab: distinct words, the special tokens first
    ("vocab-string", ("vocab",), "<pad> <start> <end> <unk> a", ("vocab", "array")),
    ("vocab-null", ("vocab",), None, ("vocab",)),
    ("vocab-repeat", ("vocab", 5), lambda doc: doc["vocab"][4], ("vocab[5]", "distinct")),
    ("vocab-number", ("vocab", 6), 7, ("vocab[6]",)),
    ("vocab-object", ("vocab", 6), {"a": 1}, ("vocab[6]",)),
    ("vocab-newline", ("vocab", 5), "two\nlines", ("vocab[5]", "white space")),
    ("vocab-empty-word", ("vocab", 5), "", ("vocab[5]",)),
    ("vocab-order", ("vocab", 0), "<start>", ("vocab", "<pad>")),
    ("vocab-missing", ("vocab",), DELETE, ("vocab", "missing")),
    # special_tokens: the vocabulary's ids, integers inside it
    ("special-array", ("special_tokens",), [0, 1, 2, 3], ("special_tokens", "object")),
    ("special-outside", ("special_tokens", "unk"), 99, ("special_tokens.unk", "99")),
    ("special-negative", ("special_tokens", "pad"), -1, ("special_tokens.pad",)),
    ("special-bool", ("special_tokens", "start"), True, ("special_tokens.start",)),
    ("special-float", ("special_tokens", "end"), 2.0, ("special_tokens.end",)),
    ("special-swapped", ("special_tokens", "end"), 1, ("special_tokens.end",)),
    ("special-missing", ("special_tokens", "end"), DELETE, ("special_tokens.end", "missing")),
    ("special-unknown", ("special_tokens", "eos"), 2, ("special_tokens", "eos")),
    # max_length: an integer in [1, Limits.max_length]
    ("max-length-float", ("max_length",), 2.5, ("max_length", "2.5")),
    ("max-length-string", ("max_length",), "20", ("max_length", "'20'")),
    ("max-length-huge", ("max_length",), 10 ** 9, ("max_length", "Limits.max_length")),
    ("max-length-2**70", ("max_length",), 2 ** 70, ("max_length", "Limits.max_length")),
    ("max-length-zero", ("max_length",), 0, ("max_length",)),
    ("max-length-bool", ("max_length",), True, ("max_length",)),
    # preprocess
    ("preprocess-string", ("preprocess",), "resize 32", ("preprocess", "object")),
    ("crop-string", ("preprocess", "crop"), "64", ("preprocess.crop", "'64'")),
    ("crop-huge", ("preprocess", "crop"), 10 ** 6, ("preprocess.crop", "Limits.max_crop")),
    ("resize-huge", ("preprocess", "resize"), 10 ** 6, ("preprocess.resize", "Limits.max_resize")),
    ("resize-zero", ("preprocess", "resize"), 0, ("preprocess.resize",)),
    ("resize-float", ("preprocess", "resize"), 32.0, ("preprocess.resize",)),
    ("std-zero", ("preprocess", "std"), [0.2, 0, 0.2], ("preprocess.std", "> 0", "[0.2, 0, 0.2]")),
    ("std-negative", ("preprocess", "std"), [-0.2, 0.2, 0.2], ("preprocess.std",)),
    ("std-nan", ("preprocess", "std"), [math.nan, 0.2, 0.2], ("preprocess.std",)),
    ("std-short", ("preprocess", "std"), [0.2, 0.2], ("preprocess.std",)),
    ("mean-short", ("preprocess", "mean"), [0.5, 0.5], ("preprocess.mean", "3")),
    ("mean-long", ("preprocess", "mean"), [0.5, 0.5, 0.5, 0.5], ("preprocess.mean",)),
    ("mean-strings", ("preprocess", "mean"), ["a", "b", "c"], ("preprocess.mean",)),
    ("mean-infinite", ("preprocess", "mean"), [math.inf, 0, 0], ("preprocess.mean",)),
    ("mean-huge-int", ("preprocess", "mean"), [10 ** 400, 0, 0], ("preprocess.mean",)),
    ("mean-missing", ("preprocess", "mean"), DELETE, ("preprocess.mean", "missing")),
    ("interpolation-unknown", ("preprocess", "interpolation"), "cubic", ("preprocess.interpolation", "cubic")),
    ("interpolation-number", ("preprocess", "interpolation"), 2, ("preprocess.interpolation",)),
    ("preprocess-unknown-key", ("preprocess", "pad"), 4, ("preprocess", "'pad'")),
    # graphs
    ("graphs-missing", ("graphs",), DELETE, ("graphs", "missing")),
    ("encoder-array", ENC, [], ("graphs.encoder", "object")),
    ("sha256-number", ENC + ("sha256",), 12, ("graphs.encoder.sha256", "hex")),
    ("sha256-upper", ENC + ("sha256",), lambda doc: doc["graphs"]["encoder"]["sha256"].upper(),
     ("graphs.encoder.sha256",)),
    ("sha256-short", DEC + ("sha256",), "abc", ("graphs.decoder_step.sha256",)),
    ("file-number", ENC + ("file",), 5, ("graphs.encoder.file",)),
    ("file-nul", ENC + ("file",), "enc\0oder.onnx", ("graphs.encoder.file",)),
    ("file-parent", ENC + ("file",), "../encoder.onnx", ("graphs.encoder.file", "inside the bundle")),
    ("file-absolute", ENC + ("file",), "/etc/passwd", ("graphs.encoder.file", "inside the bundle")),
    ("file-windows-drive", DEC + ("file",), "C:\\decoder_step.onnx", ("graphs.decoder_step.file",)),
    ("file-empty", DEC + ("file",), "", ("graphs.decoder_step.file",)),
    ("image-input-empty", ENC + ("image_input",), "", ("graphs.encoder.image_input",)),
    ("image-input-null", ENC + ("image_input",), None, ("graphs.encoder.image_input",)),
    ("states-string", ENC + ("state_outputs",), "h", ("graphs.encoder.state_outputs", "array")),
    ("states-numbers", ENC + ("state_outputs",), [1, 2], ("graphs.encoder.state_outputs[0]",)),
    ("states-empty", ENC + ("state_outputs",), [], ("graphs.encoder.state_outputs",)),
    ("states-count", DEC + ("state_inputs",), ["h"], ("graphs", "state_inputs (1)", "differ in number")),
    ("states-repeat", DEC + ("state_inputs",), ["h", "h"], ("graphs.decoder_step", "'h'", "twice")),
    ("token-input-missing", DEC + ("token_input",), DELETE, ("graphs.decoder_step.token_input", "missing")),
    ("greedy-half", DEC + ("next_logprob_output",), DELETE, ("graphs.decoder_step", "without the other")),
    # precision, model, provenance
    ("precision-unknown", ("precision",), "fp64", ("precision", "fp64")),
    ("precision-number", ("precision",), 32, ("precision",)),
    ("model-array", ("model",), [1], ("model", "object")),
    ("provenance-string", ("provenance",), "laptop", ("provenance", "object")),
    # decoding (decoding_from_dict, then verify_options within the limits)
    ("decoding-array", ("decoding",), [], ("decoding",)),
    ("decoding-unknown", ("decoding", "beams"), 2, ("decoding", "beams")),
    ("decoding-beam-string", ("decoding", "beam"), "2", ("decoding", "beam")),
    ("decoding-beam-huge", ("decoding", "beam"), 10 ** 6, ("decoding", "Limits.max_beam")),
    ("decoding-temperature-negative", ("decoding", "temperature"), -1, ("decoding", "temperature")),
    ("decoding-temperature-huge-int", ("decoding", "temperature"), 10 ** 400, ("decoding",)),
]


@pytest.mark.parametrize("path, value, words", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_manifest_is_refused_naming_the_field(source, manifest, tmp_path: Path, path, value, words) -> None:
    folder = write(copy_graphs(source, tmp_path / "b"), edited(manifest, path, value))
    with pytest.raises(BundleError) as caught:
        load_bundle(folder)
    assert_one_line(caught.value, folder, *words)


def test_at_least_thirty_hostile_cases() -> None:
    assert len(HOSTILE) >= 30


def test_valid_variants_still_load(source, manifest, tmp_path: Path) -> None:
    """Unknown top-level keys are information for other readers; optional fields may be absent."""
    folder = copy_graphs(source, tmp_path / "b")
    loaded = load_bundle(write(folder, {**manifest, "x-notes": {"by": "someone"}, "license": "CC0"})).manifest
    assert loaded == source.manifest
    minimal = {k: v for k, v in manifest.items() if k not in ("precision", "model", "provenance", "decoding")}
    loaded = load_bundle(write(folder, minimal)).manifest
    assert loaded.precision == "fp32" and loaded.model == {} and loaded.decoding.beam == 1
    legacy = edited(manifest, ("graphs", "decoder_step"), {k: v for k, v in manifest["graphs"]["decoder_step"].items()
                                                           if not k.startswith("next_")})
    assert load_bundle(write(folder, legacy)).manifest.decoder.greedy_outputs is None


def test_limits_are_the_callers(source, manifest, tmp_path: Path) -> None:
    """Limits bound the manifest's values; a caller raises them on purpose, through load_bundle or Captioner."""
    folder = write(copy_graphs(source, tmp_path / "b"), {**manifest, "max_length": 600})
    with pytest.raises(BundleError, match="Limits.max_length"):
        load_bundle(folder)
    with pytest.raises(BundleError, match="Limits.max_length"):
        Captioner(folder, device="cpu")
    assert load_bundle(folder, limits=Limits(max_length=1000)).manifest.max_length == 600
    assert Captioner(folder, device="cpu", limits=Limits(max_length=1000)).defaults.max_length == 600
    write(folder, manifest)
    with pytest.raises(BundleError) as caught:
        load_bundle(folder, limits=Limits(max_vocab_size=10))
    assert_one_line(caught.value, folder, "vocab", "28 words", "Limits.max_vocab_size")
    with pytest.raises(BundleError) as caught:
        load_bundle(folder, limits=Limits(max_manifest_bytes=100))
    assert_one_line(caught.value, folder, MANIFEST_NAME, "Limits.max_manifest_bytes")


# -- the file itself: not a regular file, too big, not text, nested too deeply ------------------

def call_with_timeout(function: Callable[[], Any], seconds: float = 10.0) -> BaseException:
    """The exception ``function`` raises, in a thread: a hang fails the test instead of blocking it."""
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)
        else:
            outcome.append(AssertionError("no error"))

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    assert time.monotonic() - start < seconds
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_manifest_is_refused_without_blocking(source, tmp_path: Path) -> None:
    folder = copy_graphs(source, tmp_path / "b")
    os.mkfifo(folder / MANIFEST_NAME)
    error = call_with_timeout(lambda: load_bundle(folder))
    assert isinstance(error, BundleError), repr(error)
    assert_one_line(error, folder, MANIFEST_NAME, "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_graph_is_refused_without_blocking(source, manifest, tmp_path: Path) -> None:
    folder = write(copy_graphs(source, tmp_path / "b"), manifest)
    (folder / "encoder.onnx").unlink()
    os.mkfifo(folder / "encoder.onnx")
    for verify in (True, False):
        error = call_with_timeout(lambda: load_bundle(folder, verify=verify))
        assert isinstance(error, BundleError), repr(error)
        assert_one_line(error, folder, "encoder.onnx", "not a regular file")


def test_huge_manifest_is_refused_without_reading_it(source, tmp_path: Path) -> None:
    folder = copy_graphs(source, tmp_path / "b")
    with open(folder / MANIFEST_NAME, "wb") as f:
        f.truncate(Limits().max_manifest_bytes + 1)  # sparse: costs no disk
    start = time.monotonic()
    with pytest.raises(BundleError) as caught:
        load_bundle(folder)
    assert time.monotonic() - start < 1.0
    assert_one_line(caught.value, folder, MANIFEST_NAME, "Limits.max_manifest_bytes")


def test_symlink_loop_is_not_called_missing(source, tmp_path: Path) -> None:
    folder = copy_graphs(source, tmp_path / "b")
    (folder / MANIFEST_NAME).symlink_to(folder / MANIFEST_NAME)
    with pytest.raises(BundleError) as caught:
        load_bundle(folder)
    assert_one_line(caught.value, folder, MANIFEST_NAME, "cannot be read")
    assert "missing" not in str(caught.value)


@pytest.mark.parametrize("raw, words", [
    (b"[" * 100_000, ("nested",)),  # RecursionError inside json
    (b'{"provenance": ' + b'{"a": ' * 200 + b"1" + b"}" * 201, ("nested deeper than",)),  # parses; refused after
    (b"\xff\xfe{}", ("UTF-8",)),
    (b"{not json", ("JSON",)),
    (b'{"max_length": ' + b"9" * 5000 + b"}", ("JSON",)),  # more digits than Python converts
    (b"", ("JSON",)),
])
def test_unreadable_documents_are_one_line(source, tmp_path: Path, raw: bytes, words) -> None:
    folder = copy_graphs(source, tmp_path / "b")
    (folder / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(BundleError) as caught:
        load_bundle(folder)
    assert_one_line(caught.value, folder, MANIFEST_NAME, *words)


def test_bundle_folder_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    assert_one_line(caught.value, path, "not a bundle folder")


# -- property tests: any JSON anywhere is a clean refusal or a loaded bundle --------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10)


def field_paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path into ``value`` (a few vocabulary entries only), plus one new key per object."""
    paths = [path] if path else []
    if isinstance(value, dict):
        paths.append(path + ("x-new",))
        for key, child in value.items():
            paths += field_paths(child, path + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value[:6]):
            paths += field_paths(child, path + (i,))
        paths.append(path + (len(value),))  # one more item
    return paths


@pytest.fixture(scope="module")
def scratch(source, tmp_path_factory) -> Path:
    return copy_graphs(source, tmp_path_factory.mktemp("schema") / "b")


@pytest.mark.slow  # about 3 s: a few hundred loads, some with ONNX Runtime sessions
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_at_any_field_loads_or_is_refused_cleanly(source, manifest, scratch, data) -> None:
    paths = field_paths(manifest)
    doc = manifest
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        path = data.draw(st.sampled_from(paths), label="path")
        value = data.draw(json_values | st.just(DELETE), label="value")
        try:
            doc = edited(doc, path, value)
        except (KeyError, IndexError, TypeError):  # an earlier edit removed or replaced the parent
            continue
    write(scratch, doc)
    try:
        bundle = load_bundle(scratch, verify=False)
    except CapkitError as e:
        assert_one_line(e, scratch)
        return
    if all(doc.get(key) == manifest[key] for key in ("graphs", "vocab", "preprocess")):
        return  # nothing the graphs are checked against has changed (and sessions take tens of ms)
    try:  # it loaded: the graphs must agree with it, or be refused cleanly
        OnnxInference(bundle, device="cpu")
    except CapkitError as e:
        assert_one_line(e, scratch)


@settings(max_examples=200, deadline=None)
@given(doc=json_values)
def test_any_json_document_is_refused_cleanly(scratch, doc) -> None:
    write(scratch, doc)
    with pytest.raises(CapkitError) as caught:
        load_bundle(scratch, verify=False)
    assert_one_line(caught.value, scratch)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_refused_cleanly(scratch, raw: bytes) -> None:
    (scratch / MANIFEST_NAME).write_bytes(raw)
    with pytest.raises(CapkitError) as caught:
        load_bundle(scratch, verify=False)
    assert_one_line(caught.value, scratch)


# -- agreement with the graphs ------------------------------------------------------------------

@pytest.mark.parametrize("change", [+1, -1])
def test_vocabulary_must_match_the_logits(source, manifest, tmp_path: Path, change: int) -> None:
    words = manifest["vocab"] + ["zebra"] if change > 0 else manifest["vocab"][:-1]
    folder = write(copy_graphs(source, tmp_path / "b"), {**manifest, "vocab": words})
    bundle = load_bundle(folder)  # the schema alone cannot tell: the graph knows the width
    with pytest.raises(BundleError) as caught:
        OnnxInference(bundle, device="cpu")
    assert_one_line(caught.value, folder, f"vocab has {len(words)} words", "'logits'", f"{len(manifest['vocab'])} tokens")
    with pytest.raises(BundleError):
        Captioner(folder, device="cpu")


def test_crop_must_match_a_static_image_input(source, manifest, tmp_path: Path) -> None:
    folder = write(copy_graphs(source, tmp_path / "b"),
                   edited(manifest, ("preprocess",), {**manifest["preprocess"], "resize": 40, "crop": 40}))
    with pytest.raises(BundleError) as caught:
        OnnxInference(load_bundle(folder), device="cpu")
    assert_one_line(caught.value, folder, "preprocess.crop is 40", "32 x 32")


def rewrite_graph(folder: Path, manifest: dict[str, Any], role: str, change: Callable[[Any], None]) -> dict[str, Any]:
    """Applies ``change`` to the ONNX model of graphs[role], saves it, and returns the manifest with its new sha256."""
    onnx = pytest.importorskip("onnx")
    path = folder / manifest["graphs"][role]["file"]
    model = onnx.load(str(path))
    change(model)
    path.unlink()  # a hard link to the source bundle's graph (copy_graphs): never write through it
    onnx.save(model, str(path))
    return edited(manifest, ("graphs", role, "sha256"), sha256_file(path))


def test_crop_may_differ_from_a_dynamic_image_input(source, manifest, tmp_path: Path) -> None:
    def dynamic_size(model) -> None:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"

    folder = copy_graphs(source, tmp_path / "b")
    doc = rewrite_graph(folder, manifest, "encoder", dynamic_size)
    write(folder, edited(doc, ("preprocess",), {**manifest["preprocess"], "resize": 40, "crop": 40}))
    inference = OnnxInference(load_bundle(folder), device="cpu")  # no static size to disagree with
    state = inference.encode(np.zeros((2, 3, 40, 40), np.float32))
    assert np.asarray(state[0]).shape == (1, 2, 32)  # (layers, batch, hidden)


@pytest.mark.parametrize("role, input_name, elem_type, words", [
    ("encoder", "image", "DOUBLE", ("'image64'", "tensor(double)", "tensor(float)")),
    ("decoder_step", "token", "INT32", ("'token64'", "tensor(int32)", "tensor(int64)")),
])
def test_input_types_follow_the_contract(source, manifest, tmp_path: Path, role, input_name, elem_type, words) -> None:
    """An input of another element type than docs/bundle.md says (through a Cast, so the graph is valid) is refused."""
    def cast_input(model) -> None:
        onnx = pytest.importorskip("onnx")
        graph = model.graph
        old = next(i for i in graph.input if i.name == input_name)
        new = copy.deepcopy(old)
        new.name = f"{input_name}64"
        new.type.tensor_type.elem_type = getattr(onnx.TensorProto, elem_type)
        target = old.type.tensor_type.elem_type
        graph.node.insert(0, onnx.helper.make_node("Cast", [new.name], [input_name], to=target))
        graph.input.remove(old)
        graph.input.insert(0, new)

    folder = copy_graphs(source, tmp_path / "b")
    key = "image_input" if role == "encoder" else "token_input"
    doc = rewrite_graph(folder, manifest, role, cast_input)
    doc = edited(doc, ("graphs", role, key), f"{input_name}64")
    if role == "decoder_step":
        doc["graphs"][role]["inputs"][0] = f"{input_name}64"
    write(folder, doc)
    with pytest.raises(BundleError) as caught:
        OnnxInference(load_bundle(folder), device="cpu")
    assert_one_line(caught.value, folder, *words)


# -- PreprocessSpec on its own (checkpoints use it too) -----------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(resize="32"), ("preprocess.resize",)),
    (dict(crop=2.5), ("preprocess.crop",)),
    (dict(crop=True), ("preprocess.crop",)),
    (dict(resize=0), ("preprocess.resize",)),
    (dict(std=(0.2, 0.0, 0.2)), ("preprocess.std", "> 0")),
    (dict(std=(0.2, -1.0, 0.2)), ("preprocess.std",)),
    (dict(std=(0.2, math.inf, 0.2)), ("preprocess.std",)),
    (dict(mean=(0.5, 0.5)), ("preprocess.mean", "3")),
    (dict(mean=(math.nan, 0.5, 0.5)), ("preprocess.mean",)),
    (dict(mean="abc"), ("preprocess.mean",)),
    (dict(interpolation="cubic"), ("preprocess.interpolation", "bilinear")),
])
def test_preprocess_spec_refuses_bad_values(kwargs, words) -> None:
    with pytest.raises(CapkitError) as caught:
        PreprocessSpec(**kwargs)
    assert "\n" not in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_preprocess_spec_from_dict() -> None:
    spec = PreprocessSpec(resize=32, crop=32)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict({"resize": 40, "crop": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}).interpolation == "bilinear"
    for data, word in ([1, 2], "preprocess"), ({**spec.to_dict(), "crop": "32"}, "preprocess.crop"), \
            ({**spec.to_dict(), "extra": 1}, "extra"), ({"resize": 32}, "preprocess.crop"):
        with pytest.raises(CapkitError, match=word):
            PreprocessSpec.from_dict(data)


def test_decoding_block_carries_every_option_but_max_length() -> None:
    """The manifest's ``decoding`` block writes and reads every DecodingOptions field; max_length is top level."""
    options = DecodingOptions(temperature=0.7, top_k=5, top_p=0.9, beam=1, max_length=33, seed=4)
    block = decoding_to_dict(options)
    assert set(block) == {f.name for f in dataclasses.fields(DecodingOptions)} - {"max_length"}
    assert decoding_from_dict(block) == dataclasses.replace(options, max_length=DecodingOptions().max_length)
    with pytest.raises(BundleError, match=r"unknown option 'max_len' \(known: temperature, top_k, top_p, beam, seed\)"):
        decoding_from_dict({"max_len": 3})
