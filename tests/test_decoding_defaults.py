"""A bundle's default decoding options (its manifest's ``decoding`` block) are what a caption gets
unless the caller says otherwise: in the library (``Captioner``), then in ``capkit caption``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from capkit.runtime import BundleError, Captioner, load_bundle
from capkit.runtime.manifest import MANIFEST_NAME

pytest.importorskip("torch")

from capkit.cli import main  # noqa: E402
from capkit.export.checks import synthetic_images  # noqa: E402


def with_decoding(source: Path, folder: Path, decoding: dict) -> Path:
    """A copy of the bundle at ``source`` whose manifest's decoding block is ``decoding``."""
    shutil.copytree(source, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["decoding"] = decoding
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def source(export_kit) -> Path:
    return export_kit.bundle("lstm").folder


@pytest.fixture(scope="module")
def images():
    return synthetic_images(12, seed=7)


def tokens(captions) -> list[tuple[int, ...]]:
    return [c.tokens for c in captions]


def test_exported_bundles_default_to_greedy(source) -> None:
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert manifest["decoding"] == {"temperature": 0.0, "beam": 1}
    defaults = Captioner(source, device="cpu").defaults
    assert (defaults.temperature, defaults.beam, defaults.max_length) == (0.0, 1, manifest["max_length"])


def test_sampling_defaults_are_used(source, images, tmp_path: Path) -> None:
    reference = Captioner(source, device="cpu")
    sampled = with_decoding(source, tmp_path / "sampled", {"temperature": 1.5, "top_k": 5, "seed": 3})
    captioner = Captioner(sampled, device="cpu")
    expected = reference.caption_batch(images, temperature=1.5, top_k=5, seed=3)
    assert tokens(captioner.caption_batch(images)) == tokens(expected)
    greedy = reference.caption_batch(images)
    assert tokens(expected) != tokens(greedy)  # the defaults really change the captions
    assert tokens(captioner.caption_batch(images, temperature=0)) == tokens(greedy)  # a given option wins


def test_beam_default_and_a_given_temperature(source, images, tmp_path: Path) -> None:
    reference = Captioner(source, device="cpu")
    beam = Captioner(with_decoding(source, tmp_path / "beam", {"temperature": 0, "beam": 3}), device="cpu")
    assert tokens(beam.caption_batch(images)) == tokens(reference.caption_batch(images, beam=3))
    # sampling asked for on a beam-search bundle samples (the default beam gives way) instead of failing
    assert tokens(beam.caption_batch(images, temperature=0.7, seed=1)) == \
        tokens(reference.caption_batch(images, temperature=0.7, seed=1))


def test_the_command_honours_the_defaults(source, images, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    from PIL import Image

    for i, pixels in enumerate(images[:4]):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    sampled = with_decoding(source, tmp_path / "sampled", {"temperature": 1.5, "top_k": 5, "seed": 3})
    expected = Captioner(source, device="cpu").caption_batch(sorted(folder.iterdir()), temperature=1.5, top_k=5, seed=3)

    def cli(*args: str) -> list[list[int]]:
        result = CliRunner().invoke(main, ["caption", str(folder), "--model", str(sampled), "--device", "cpu", "--json",
                                           *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["tokens"] for line in result.stdout.splitlines()]

    assert cli() == [list(c.tokens) for c in expected]
    greedy = Captioner(source, device="cpu").caption_batch(sorted(folder.iterdir()))
    assert cli("--temp", "0") == [list(c.tokens) for c in greedy]


def test_decoding_block_is_checked(source, tmp_path: Path) -> None:
    legacy = with_decoding(source, tmp_path / "legacy", {"temperature": 0.0, "beam_size": 2, "max_length": 99})
    manifest = load_bundle(legacy).manifest  # capkit 0.1's keys: beam_size read as beam, max_length top level
    assert manifest.decoding.beam == 2 and manifest.decoding.max_length == manifest.max_length
    with pytest.raises(BundleError, match="unknown option 'beams'"):
        load_bundle(with_decoding(source, tmp_path / "unknown", {"beams": 2}))
