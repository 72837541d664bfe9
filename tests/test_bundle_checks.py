"""load_bundle's integrity checks in one read per graph: the sha256 and the external-data scan."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from capkit.runtime.bundle import DECODER_FILE, ENCODER_FILE, EXTERNAL_DATA_MARKER, _digest, load_bundle, sha256_file
from capkit.runtime.manifest import BundleError, DecoderStepGraph, EncoderGraph, Manifest
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

CHUNK = 1 << 20


@pytest.mark.parametrize("position", [None, 0, 7, CHUNK - len(EXTERNAL_DATA_MARKER), CHUNK - 3, CHUNK, 2 * CHUNK + 1])
def test_digest_hashes_and_finds_the_marker_anywhere(tmp_path: Path, position) -> None:
    data = bytearray(os.urandom(2 * CHUNK + 300)).replace(EXTERNAL_DATA_MARKER, b"-" * len(EXTERNAL_DATA_MARKER))
    if position is not None:  # also across the boundary of two 1 MB reads
        data[position:position + len(EXTERNAL_DATA_MARKER)] = EXTERNAL_DATA_MARKER
    path = tmp_path / "blob"
    path.write_bytes(bytes(data))
    digest, found = _digest(path, EXTERNAL_DATA_MARKER)
    assert digest == hashlib.sha256(bytes(data)).hexdigest() == sha256_file(path)
    assert found == (position is not None)


def fake_graph(external: str | None) -> bytes:
    """Bytes that stand in for an ONNX file; with ``external``, an external-data entry naming that file."""
    body = os.urandom(5000).replace(EXTERNAL_DATA_MARKER, b"")
    if external is None:
        return body
    name = external.encode()
    return body + EXTERNAL_DATA_MARKER + bytes([len(name)]) + name + body


def write_bundle(folder: Path, encoder: bytes, decoder: bytes) -> Path:
    folder.mkdir()
    (folder / ENCODER_FILE).write_bytes(encoder)
    (folder / DECODER_FILE).write_bytes(decoder)
    Manifest(vocab=Vocabulary(SPECIAL_TOKENS + ("a",)), preprocess=PreprocessSpec(resize=8, crop=8), max_length=3,
             encoder=EncoderGraph(ENCODER_FILE, sha256_file(folder / ENCODER_FILE), "image", ("h",)),
             decoder=DecoderStepGraph(DECODER_FILE, sha256_file(folder / DECODER_FILE), "token", ("h",), "logits",
                                  ("h_next",))).write(folder)
    return folder


def test_missing_external_data_is_found_in_the_same_read(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b", fake_graph(None), fake_graph("decoder_step.onnx.data"))
    with pytest.raises(BundleError, match="external data file 'decoder_step.onnx.data'"):
        load_bundle(folder)
    (folder / "decoder_step.onnx.data").write_bytes(b"weights")
    assert load_bundle(folder).manifest.max_length == 3
    load_bundle(write_bundle(tmp_path / "plain", fake_graph(None), fake_graph(None)))  # no external data at all
