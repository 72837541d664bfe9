"""Hostile images: a generated corpus (extreme aspect ratios, bombs, truncated files, wrong magic, FIFOs,
symlink loops, odd names, non-image objects), each refused in one line, in bounded memory, without
losing the good images' captions around it.

The corpus is written in tmp_path: PNGs are written by hand (:func:`png`) so that a 2 x 40,000,000 image
is a small file made in a fraction of a second and a header can claim 100,000 x 100,000 pixels.
The memory cases run ``capkit caption`` in a subprocess under an address-space limit (a regression
fails the test, not the machine) and measure its peak resident memory.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from capkit.runtime import Captioner, ImageError
from capkit.runtime.errors import CapkitError
from capkit.runtime.image_files import load_image
from capkit.runtime.limits import LimitError, Limits
from capkit.runtime.preprocess import PreprocessSpec, preprocess

SPEC = PreprocessSpec(resize=32, crop=32)
HAS_FIFO = hasattr(os, "mkfifo")


PNG_MODES = {"L": (8, 0, 1), "I;16": (16, 0, 2), "RGBA": (8, 6, 4)}  # mode -> bit depth, colour type, bytes a pixel


def png(width: int, height: int, *, pixels: bool = True, mode: str = "L") -> bytes:
    """A PNG of zeros (8-bit greyscale unless ``mode`` says "I;16" or "RGBA"), compressed row block by row
    block (a 2 x 40,000,000 image is a ~120 KB file); ``pixels=False`` writes only the header's claim and
    a scrap of image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    depth, colour, size = PNG_MODES[mode]
    row = bytes(1 + width * size)  # filter byte 0, then the row's pixels
    if pixels:
        z = zlib.compressobj(6)
        per_block = max(1, (1 << 20) // len(row))
        parts, left = [], height
        while left:
            n = min(per_block, left)
            parts.append(z.compress(row * n))
            left -= n
        idat = b"".join(parts) + z.flush()
    else:
        idat = zlib.compress(bytes(1 + min(width, 1000)))  # far too little: decoding would fail, not blow up
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def good_pixels(n: int) -> list[np.ndarray]:
    """n distinct small RGB images."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (24 + 4 * i, 40, 3), dtype=np.uint8) for i in range(n)]


# name -> (file bytes, or a kind of special file) and the words its one-line error must hold
def corpus_spec() -> dict[str, tuple[Any, list[str]]]:
    photo = encoded(Image.fromarray(good_pixels(1)[0]), "JPEG", quality=90)
    big_png = encoded(Image.fromarray(good_pixels(1)[0]), "PNG")
    anim = encoded(Image.new("RGB", (2, 400), (255, 0, 0)), "GIF", save_all=True,
                   append_images=[Image.new("RGB", (2, 400), (0, 0, 255))], duration=100)
    return {
        "strip.png": (png(1, 1_000_000), ["1x1000000", "aspect ratio", "Limits.max_aspect_ratio"]),
        "needle.png": (png(2, 40_000_000), ["2x40000000", "Limits.max_image_pixels"]),
        "bomb.png": (png(100_000, 100_000, pixels=False), ["10,000,000,000 pixels", "Limits.max_image_pixels"]),
        "square-bomb.png": (png(8000, 8000, pixels=False), ["8000x8000", "Limits.max_image_pixels"]),
        "wide.gif": (anim, ["2x400", "Limits.max_aspect_ratio"]),  # animated: bounded like any image
        "zero-width.png": (png(0, 10, pixels=False), ["zero-width.png"]),
        "truncated.jpg": (photo[: len(photo) // 2], ["truncated.jpg", "corrupt"]),
        "truncated.png": (big_png[: len(big_png) // 2], ["truncated.png", "corrupt"]),
        "text.jpg": (b"these are not pixels\n" * 20, ["text.jpg", "not an image"]),
        "empty.jpg": (b"", ["empty.jpg", "not an image"]),
        "bad\nline.png": (b"\x89PNG\r\n\x1a\n" + bytes(40), ["bad\\nline.png"]),
        "bad\ttab.png": (b"junk", ["bad\\ttab.png", "not an image"]),
        "fifo.jpg": ("fifo", ["fifo.jpg", "not a regular file", "FIFO"]),
        "loop.jpg": ("loop", ["loop.jpg", "cannot read", "symbolic links"]),
        "dangling.jpg": ("dangling", ["dangling.jpg", "no such file"]),
        "folder.jpg": ("folder", ["folder.jpg", "is a folder"]),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    root = tmp_path_factory.mktemp("hostile")
    made = {}
    for name, (content, words) in corpus_spec().items():
        path = root / name
        if content == "fifo":
            if not HAS_FIFO:
                continue
            os.mkfifo(path)
        elif content == "loop":
            os.symlink(root / "loop-b.jpg", path)
            os.symlink(path, root / "loop-b.jpg")
        elif content == "dangling":
            os.symlink(root / "gone.jpg", path)
        elif content == "folder":
            path.mkdir()
        else:
            path.write_bytes(content)
        made[name] = (path, words)
    return made


@pytest.fixture(scope="module")
def good_files(tmp_path_factory) -> list[Path]:
    """Readable images, some with odd names (a newline, a tab, unicode)."""
    root = tmp_path_factory.mktemp("good")
    paths = []
    for name, pixels in zip(["a.png", "new\nline.png", "tab\there.jpg", "ünïcødé 漢字.png"], good_pixels(4)):
        Image.fromarray(pixels).save(root / name, quality=95)
        paths.append(root / name)
    return paths


def assert_one_line(message: str, *words: str) -> None:
    assert message and "\n" not in message and "\r" not in message, repr(message)
    for word in words:
        assert word in message, (word, message)


def load_in_thread(source: Any, limits: Limits = Limits()) -> BaseException | None:
    """load_image(source) in a thread that must end within 10 s (a FIFO opened for reading would block)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            load_image(source, limits)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome, f"load_image({source!r}) blocked"
    return outcome[0]


# --- the library: one line naming the file and the reason, decided from the header -----------------

@pytest.mark.parametrize("name", list(corpus_spec()))
def test_each_hostile_file_is_refused_in_one_line(corpus, name: str) -> None:
    if name not in corpus:
        pytest.skip("no FIFOs on this platform")
    path, words = corpus[name]
    error = load_in_thread(path)
    assert isinstance(error, ImageError) and isinstance(error, CapkitError), repr(error)
    assert_one_line(str(error), *words)
    if "Limits." in " ".join(words):
        assert isinstance(error, LimitError)  # over a limit: both an ImageError and a LimitError
    with pytest.raises(ImageError):
        preprocess(path, SPEC)


def test_limits_are_checked_before_decoding(corpus) -> None:
    """The bomb's header claims 10**10 pixels over a few bytes of data: decoding it would fail as a truncated
    file; the limit says so first. Raised limits let the same header through to the decoder."""
    path = corpus["square-bomb.png"][0]
    with pytest.raises(LimitError, match="max_image_pixels"):
        load_image(path)
    with pytest.raises(ImageError) as e:
        load_image(path, Limits(max_image_pixels=100_000_000))
    assert not isinstance(e.value, LimitError) and "corrupt" in str(e.value)


def test_raised_limits_allow_a_long_image(tmp_path: Path) -> None:
    path = tmp_path / "long.png"
    path.write_bytes(png(2, 400))
    with pytest.raises(LimitError, match="aspect ratio of 200.0:1, over the limit of 50:1"):
        preprocess(path, SPEC)
    assert preprocess(path, SPEC, Limits(max_aspect_ratio=200)).shape == (3, 32, 32)


def test_resized_size_is_bounded(tmp_path: Path) -> None:
    """A 1 x 40 image under both limits, resized to a shorter side of 2048, would be 2048 x 81920 pixels."""
    path = tmp_path / "thin.png"
    path.write_bytes(png(1, 40))
    with pytest.raises(LimitError, match="2048x81920"):
        preprocess(path, PreprocessSpec(resize=2048, crop=32))
    assert preprocess(path, PreprocessSpec(resize=64, crop=32)).shape == (3, 32, 32)


@pytest.mark.parametrize("limit, threshold", [(1000, 2000), (3000, 3000)])  # 4096 pixels: Pillow's error / warning
def test_pillow_bomb_message_is_consistent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int,
                                          threshold: int) -> None:
    path = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageError) as e:
        load_image(path)
    message = str(e.value)
    assert_one_line(message, "bomb.png", "4,096 pixels", f"pixel limit of {threshold:,}")
    numbers = [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\d|\d", message.split(": ", 1)[1])]
    assert numbers == [4096, threshold] and 4096 > threshold  # one pixel count, one limit, and it is over it


@pytest.mark.parametrize("source, words", [
    (None, ["unsupported image source of type NoneType"]),
    (3, ["unsupported image source of type int"]),
    (2.5, ["unsupported image source of type float"]),
    ({"path": "a.jpg"}, ["unsupported image source of type dict"]),
    (["a.jpg"], ["unsupported image source of type list"]),
    (np.zeros((0, 0, 3), np.uint8), ["empty image", "0x0"]),
    (np.zeros((0, 5), np.uint8), ["empty image"]),
    (np.zeros((4, 4, 3), np.float32), ["uint8"]),
    (np.zeros((1, 1000, 3), np.uint8), ["Limits.max_aspect_ratio"]),
    (b"", ["<bytes>", "not an image"]),
    (bytearray(b"junk"), ["<bytes>", "not an image"]),
], ids=lambda v: type(v).__name__)
def test_non_image_objects(source: Any, words: list[str]) -> None:
    with pytest.raises(ImageError) as e:
        preprocess(source, SPEC)
    assert_one_line(str(e.value), *words)


def test_empty_pillow_images() -> None:
    for img in (Image.new("RGB", (0, 0)), Image.new("L", (0, 7))):
        with pytest.raises(ImageError, match="empty image"):
            preprocess(img, SPEC)


# --- the captioner: per-item isolation ---------------------------------------------------------------

@pytest.fixture(scope="module")
def captioner(export_kit) -> Captioner:
    return Captioner(export_kit.bundle("lstm").folder, device="cpu", threads=1)


class BrokenPath(os.PathLike):
    def __fspath__(self) -> str:
        raise RuntimeError("this path cannot be named")


def test_a_batch_of_anything_keeps_the_good_captions(captioner, corpus, good_files) -> None:
    good: list[Any] = [*good_files, *good_pixels(2)]
    alone = [captioner.caption(image) for image in good]
    bad: list[Any] = [path for path, _ in corpus.values()] + [
        None, 7, 1.5, {"a": 1}, object(), np.zeros((0, 0, 3), np.uint8), np.zeros((3, 3, 3), np.int64),
        Image.new("RGB", (0, 0)), b"", BrokenPath()]
    sources: list[Any] = []
    for i, item in enumerate(bad):  # good images scattered among the bad, across batch boundaries
        sources.append(item)
        if i % 4 == 0:
            sources.append(good[(i // 4) % len(good)])
    sources += good
    results = captioner.caption_batch(sources, batch_size=5)
    assert len(results) == len(sources)
    for source, result in zip(sources, results):
        expected = next((a for g, a in zip(good, alone) if g is source), None)
        if expected is not None:
            assert result.ok and (result.tokens, result.text) == (expected.tokens, expected.text), result
        else:
            assert not result.ok and result.tokens == () and result.text == "", source
            assert_one_line(result.error)
            if isinstance(source, Path):
                assert str(source).replace("\n", "\\n").replace("\t", "\\t") in result.error
                assert result.image == str(source)  # the exact name, for JSON
    errors = {type(s).__name__: r.error for s, r in zip(sources, results) if not r.ok}
    assert errors["NoneType"] == "unsupported image source of type NoneType"
    assert errors["object"] == "unsupported image source of type object"
    assert "cannot be named" in errors["BrokenPath"]


def test_a_memory_error_is_one_images_error(captioner, good_files, monkeypatch: pytest.MonkeyPatch) -> None:
    import capkit.runtime.captioner as module

    real = module.preprocess

    def flaky(source, spec, limits, **options):
        if isinstance(source, str) and source == "huge":
            raise MemoryError()
        return real(source, spec, limits, **options)

    monkeypatch.setattr(module, "preprocess", flaky)
    results = captioner.caption_batch([good_files[0], "huge", good_files[1]])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "huge: MemoryError" and results[1].image == "huge"
    assert results[0].tokens == captioner.caption(good_files[0]).tokens


def test_single_caption_still_raises(captioner, corpus) -> None:
    with pytest.raises(LimitError, match="strip.png"):
        captioner.caption(corpus["strip.png"][0])
    with pytest.raises(ImageError, match="unsupported image source of type NoneType"):
        captioner.caption(None)  # type: ignore[arg-type]
    with pytest.raises(CapkitError, match="use caption"):
        captioner.caption_batch(str(corpus["strip.png"][0]))  # one path is not a batch of its characters


@pytest.mark.parametrize("batch_size", [2, 16])
def test_a_failing_source_keeps_what_it_gave(captioner, good_files, batch_size: int) -> None:
    """Documented choice: the images read before the source failed are captioned and yielded, then the
    source's own exception is raised from iter_captions (caption_batch raises it, its results lost
    with the call, so a caller that needs them iterates)."""
    alone = [captioner.caption(path) for path in good_files[:3]]

    def source() -> Iterator[Path]:
        yield from good_files[:3]
        raise RuntimeError("the camera went away")

    got = []
    with pytest.raises(RuntimeError, match="the camera went away"):
        for caption in captioner.iter_captions(source(), batch_size=batch_size):
            got.append(caption)
    assert [(c.tokens, c.image) for c in got] == [(a.tokens, a.image) for a in alone]


# --- the command -------------------------------------------------------------------------------------

def run_cli(*args: Any):
    from capkit.cli import main

    result = CliRunner().invoke(main, ["caption", *map(str, args), "--device", "cpu"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output + result.stderr
    return result


def test_odd_names_never_split_the_output(captioner, export_kit, good_files, corpus) -> None:
    bundle = export_kit.bundle("lstm").folder
    bad = corpus["bad\nline.png"][0]
    alone = {str(p): captioner.caption(p).text for p in good_files}
    result = run_cli(*good_files, bad, "--model", bundle)
    assert result.exit_code == 1
    escaped = {str(p): str(p).replace("\n", "\\n").replace("\t", "\\t") for p in good_files}
    assert result.stdout.splitlines() == [f"{escaped[str(p)]}: {alone[str(p)]}" for p in good_files]
    assert result.stderr.splitlines() == [f"Error: {captioner.caption_batch([bad])[0].error}"]
    assert "bad\\nline.png" in result.stderr

    result = run_cli(*good_files, bad, "--model", bundle, "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["image"] for row in rows] == [*map(str, good_files), str(bad)]  # JSON: the exact names
    assert [row.get("caption") for row in rows] == [*alone.values(), None]


def test_special_files_on_the_command_line(captioner, export_kit, good_files, corpus) -> None:
    bundle = export_kit.bundle("lstm").folder
    names = [n for n in ("fifo.jpg", "loop.jpg", "strip.png", "needle.png", "folder.jpg") if n in corpus]
    args = [good_files[0], *[corpus[n][0] for n in names], good_files[3]]
    result = run_cli(*args, "--model", bundle)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{p}: {captioner.caption(p).text}" for p in (good_files[0], good_files[3])]
    errors = result.stderr.splitlines()
    expected = {"fifo.jpg": "not a regular file", "loop.jpg": "cannot read", "strip.png": "max_aspect_ratio",
                "needle.png": "max_image_pixels", "folder.jpg": "no images in this folder"}
    assert len(errors) == len(names)
    for name, line in zip(names, errors):
        assert_one_line(line, "Error: ", name, expected[name])


# --- memory: a subprocess under an address-space limit, its peak resident memory measured ----------

SAFETY_NET = ("import os, resource, sys; limit = 4 << 30; resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); "
              "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "wait4"), reason="peak memory is measured with os.wait4")
@pytest.mark.parametrize("name", ["strip.png", "needle.png", "bomb.png"])
def test_memory_of_a_huge_image_among_good_ones(export_kit, corpus, good_files, name: str) -> None:
    from capkit.bench.cold_start import caption_command, run_child

    huge = corpus[name][0]
    command = caption_command(str(good_files[0]), [str(huge), str(good_files[3]), "--model",
                                                   str(export_kit.bundle("lstm").folder), "--device", "cpu",
                                                   "--threads", "1"])
    wall, peak, status, stdout, stderr = run_child([sys.executable, "-c", SAFETY_NET, *command], timeout=60)
    assert status == 1, (status, stderr)
    assert wall < 30, wall
    assert peak is not None and peak < 1024, peak
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and name in errors[0], stderr
    captioned = stdout.splitlines()
    assert len(captioned) == 2, stdout
    assert captioned[0].startswith(f"{good_files[0]}: ") and captioned[1].startswith(f"{good_files[3]}: ")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "wait4"), reason="peak memory is measured with os.wait4")
@pytest.mark.parametrize("mode", list(PNG_MODES))
def test_memory_of_the_largest_image_allowed(export_kit, tmp_path: Path, mode: str) -> None:
    """A 7000 x 7000 PNG (49 megapixels, just under the default limit; a file of ~0.2 MB) in the modes that
    cost the most to convert (alpha compositing, 16-bit scaling) is captioned in under 1 GB."""
    from capkit.bench.cold_start import caption_command, run_child

    path = tmp_path / "large.png"
    path.write_bytes(png(7000, 7000, mode=mode))
    assert path.stat().st_size < 10 * 1024 * 1024 and Image.open(path).size == (7000, 7000)
    command = caption_command(str(path), ["--model", str(export_kit.bundle("lstm").folder), "--device", "cpu",
                                          "--threads", "1"])
    wall, peak, status, stdout, stderr = run_child([sys.executable, "-c", SAFETY_NET, *command], timeout=60)
    assert status == 0, stderr
    assert wall < 30, wall
    assert peak is not None and peak < 1024, peak
    assert len(stdout.splitlines()) == 1
