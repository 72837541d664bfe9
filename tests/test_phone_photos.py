"""Phone-size photos: large JPEGs decoded at reduced scale (libjpeg's DCT scaling through Pillow's
``draft``) when ``preprocess(..., fast_decode=True)``, full decoding (torchvision parity) otherwise.

The tolerance of fast decoding against full decoding on a generated 12-megapixel JPEG (resize 256,
crop 224; decoded at 1/4 scale), measured by reports/phone_photos.py on three such photos at a
largest difference of 4 and a mean of 0.24 8-bit levels, is asserted with headroom: PHONE_MAX_LEVELS
and PHONE_MEAN_LEVELS. The small generated JPEGs of the other tests (sharp edges, small outputs)
get the looser MAX_LEVELS and MEAN_LEVELS.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from capkit.runtime import image_files
from capkit.runtime.image_files import ImageError, ImageLimitError, load_image
from capkit.runtime.limits import Limits
from capkit.runtime.preprocess import PreprocessSpec, preprocess, preprocess_batch

PHONE_MAX_LEVELS = 8.0  # largest |fast - full| of the preprocessed tensor of a 12 MP JPEG, 8-bit levels (measured: 4)
PHONE_MEAN_LEVELS = 0.5  # mean |fast - full| of it, 8-bit levels (measured: 0.24)
MAX_LEVELS = 12.0  # the same for the small JPEGs below
MEAN_LEVELS = 1.0
SMALL_SPEC = PreprocessSpec(resize=32, crop=32)  # draft from a shorter side of 64 pixels up
pre = importlib.import_module("capkit.runtime.preprocess")  # the module (capkit.runtime.preprocess is also a function)


def _load_parity_helper():
    """tests/test_preprocess.py's torchvision pipeline (tests/ is not a package; pytest imports in importlib mode)."""
    pytest.importorskip("torchvision.transforms")
    spec = importlib.util.spec_from_file_location("_preprocess_parity", Path(__file__).with_name("test_preprocess.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.torchvision_preprocess


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a block and some noise: a photo-like image (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 6, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 4, height, dtype=np.float32)[:, None, None]
    pixels = 128 + 70 * np.sin(x + rng.uniform(0, 6, 3).astype(np.float32)) + 50 * np.cos(y)
    pixels[height // 4:height // 2, width // 3:width // 2] = rng.integers(0, 256, 3)
    pixels = pixels + rng.normal(0, 4, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray, path: Path | None = None, mode: str = "RGB", **params) -> bytes:
    img = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90, **params)
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def in_levels(a: np.ndarray, b: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """|a - b| of two preprocessed tensors in 8-bit levels (the normalisation undone)."""
    return np.abs((a.astype(np.float64) - b) * np.asarray(spec.std)[:, None, None] * 255.0)


@pytest.fixture
def drafts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Every JPEG draft asked for: (the size asked for, the size the image will be decoded at)."""
    calls: list[tuple[tuple[int, int], tuple[int, int]]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((tuple(size), self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


# -- when the draft is used ---------------------------------------------------------------------------------------
def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path: Path, drafts) -> None:
    path = tmp_path / "large.jpg"
    jpeg(photo(400, 300), path)  # shorter side 300 >= 2 x 32: libjpeg decodes it at 1/4 scale
    out = preprocess(path, SMALL_SPEC, fast_decode=True)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert drafts == [((100, 75), (100, 75))]  # 1/4: still twice the resized 42x32; 1/8 would not be
    img, draft = image_files._open(path, Limits(), SMALL_SPEC.resize)  # the evidence, without timing: the decoded size
    assert img.size == (100, 75) and draft == ((400, 300), (0.0, 0.0, 100.0, 75.0))
    assert preprocess(jpeg(photo(400, 300)), SMALL_SPEC, fast_decode=True).shape == (3, 32, 32)  # bytes too
    assert len(drafts) == 3


def test_the_default_follows_fast_decode(tmp_path: Path, drafts, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "large.jpg"
    jpeg(photo(400, 300), path)
    fast, full = preprocess(path, SMALL_SPEC, fast_decode=True), preprocess(path, SMALL_SPEC, fast_decode=False)
    assert len(drafts) == 1 and not np.array_equal(fast, full)  # the option changes the pixels, a little
    assert np.array_equal(preprocess(path, SMALL_SPEC), fast if pre.FAST_DECODE else full)
    monkeypatch.setattr(pre, "FAST_DECODE", not pre.FAST_DECODE)
    assert np.array_equal(preprocess(path, SMALL_SPEC), fast if pre.FAST_DECODE else full)
    assert np.array_equal(preprocess_batch([path], SMALL_SPEC, fast_decode=False)[0], full)


@pytest.mark.parametrize("size", [(63, 200), (200, 63), (60, 50), (32, 32)])
def test_a_jpeg_under_twice_the_resize_is_decoded_in_full(tmp_path: Path, drafts, size: tuple[int, int]) -> None:
    path = tmp_path / "small.jpg"
    jpeg(photo(*size), path)
    fast = preprocess(path, SMALL_SPEC, fast_decode=True)
    assert drafts == [] and np.array_equal(fast, preprocess(path, SMALL_SPEC, fast_decode=False))


def test_exactly_twice_the_resize_is_drafted(tmp_path: Path, drafts) -> None:
    path = tmp_path / "twice.jpg"
    jpeg(photo(100, 64), path)  # shorter side 64 = 2 x 32
    preprocess(path, SMALL_SPEC, fast_decode=True)
    assert drafts == [((50, 32), (50, 32))]  # 1/2 scale, though under twice the resized size 50x32


def test_load_image_never_drafts(tmp_path: Path, drafts) -> None:
    """Training loads its images with load_image (training/data.py): always the full pixels."""
    path = tmp_path / "large.jpg"
    jpeg(photo(400, 300), path)
    assert load_image(path).size == (400, 300) and drafts == []


# -- what it changes --------------------------------------------------------------------------------------------
@pytest.mark.slow  # torchvision's import, seconds
def test_exact_mode_is_bit_identical_to_torchvision(tmp_path: Path, drafts) -> None:
    torchvision_preprocess = _load_parity_helper()
    path = tmp_path / "photo.jpg"
    jpeg(photo(1024, 768, seed=2), path)  # shorter side 768 >= 2 x 256: fast decoding would draft it
    for spec in (PreprocessSpec(), PreprocessSpec(resize=64, crop=56, interpolation="bicubic")):
        exact = preprocess(path, spec, fast_decode=False)
        reference = torchvision_preprocess(load_image(path), spec)
        assert exact.shape == reference.shape and np.abs(exact - reference).max() <= 1e-6
        fast = preprocess(path, spec, fast_decode=True)
        assert np.abs(fast - reference).max() > 1e-6  # the option is what keeps the parity
    assert len(drafts) == 2


@pytest.mark.slow
def test_a_12_megapixel_jpeg_stays_within_tolerance(tmp_path: Path, drafts) -> None:
    from capkit.bench.images import PHONE_PHOTO_SIZE, phone_photos

    (path,) = phone_photos(tmp_path, 1)
    assert Image.open(path).size == PHONE_PHOTO_SIZE == (4032, 3024)
    spec = PreprocessSpec()
    fast, full = preprocess(path, spec, fast_decode=True), preprocess(path, spec, fast_decode=False)
    assert drafts == [((1008, 756), (1008, 756))]  # 1/4 scale: 16 times fewer pixels, twice the resized 341x256
    diff = in_levels(fast, full, spec)
    assert diff.max() <= PHONE_MAX_LEVELS and diff.mean() <= PHONE_MEAN_LEVELS, (diff.max(), diff.mean())


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_and_odd_sizes(tmp_path: Path, drafts, orientation: int) -> None:
    """The reduced image is resized in its stored orientation, then turned by its EXIF orientation; a
    size that is no multiple of the scale keeps its exact area (the draft's box)."""
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg(photo(403, 301, seed=orientation), path, exif=exif.tobytes())
    spec = PreprocessSpec(resize=36, crop=30)
    fast, full = preprocess(path, spec, fast_decode=True), preprocess(path, spec, fast_decode=False)
    assert len(drafts) == 1 and fast.shape == full.shape == (3, 30, 30)
    diff = in_levels(fast, full, spec)
    assert diff.mean() <= MEAN_LEVELS and diff.max() <= MAX_LEVELS, (diff.max(), diff.mean())


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_jpegs(tmp_path: Path, drafts, mode: str) -> None:
    path = tmp_path / f"{mode}.jpg"
    jpeg(photo(320, 240), path, mode=mode)
    spec = PreprocessSpec(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    fast, full = preprocess(path, spec, fast_decode=True), preprocess(path, spec, fast_decode=False)
    assert len(drafts) == 1
    diff = in_levels(fast, full, spec)
    assert diff.mean() <= MEAN_LEVELS and diff.max() <= MAX_LEVELS
    if mode == "L":
        assert np.array_equal(fast[0], fast[1]) and np.array_equal(fast[1], fast[2])  # still grey


def test_other_images_are_unaffected(tmp_path: Path, drafts) -> None:
    pixels = photo(400, 300)
    png, webp = tmp_path / "large.png", tmp_path / "large.webp"
    Image.fromarray(pixels).save(png)
    Image.fromarray(pixels).save(webp, quality=90)
    caller = Image.open(io.BytesIO(jpeg(pixels)))  # a caller's (lazily opened) JPEG: never changed under it
    for source in (png, webp, pixels, caller):
        assert np.array_equal(preprocess(source, SMALL_SPEC, fast_decode=True),
                              preprocess(source, SMALL_SPEC, fast_decode=False))
    assert drafts == [] and caller.size == (400, 300)


# -- the guarantees that come first -----------------------------------------------------------------------------
def test_size_limits_apply_before_decoding(tmp_path: Path, drafts, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "large.jpg"
    jpeg(photo(400, 300), path)
    loads: list[tuple[int, int]] = []
    original_load = JpegImagePlugin.JpegImageFile.load
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load",
                        lambda self: (loads.append(self.size), original_load(self))[1])
    with pytest.raises(ImageLimitError, match=r"large\.jpg: 400x300 is 120,000 pixels.*max_image_pixels") as error:
        preprocess(path, SMALL_SPEC, Limits(max_image_pixels=100_000), fast_decode=True)
    assert "\n" not in str(error.value)
    with pytest.raises(ImageLimitError, match="max_aspect_ratio"):
        preprocess(path, SMALL_SPEC, Limits(max_aspect_ratio=1.2), fast_decode=True)
    assert drafts == [] and loads == []  # refused from the header: neither reduced nor decoded
    preprocess(path, SMALL_SPEC, Limits(max_image_pixels=120_000), fast_decode=True)
    assert len(drafts) == 1 and set(loads) == {(100, 75)}


def test_a_truncated_large_jpeg_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg(photo(400, 300))[:2000])
    for fast in (True, False):
        with pytest.raises(ImageError, match=r"cut\.jpg: corrupt or unreadable image") as error:
            preprocess(path, SMALL_SPEC, fast_decode=fast)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("width, height, resize, scale", [
    (4032, 3024, 256, 4), (3024, 4032, 224, 4), (4624, 3468, 256, 4), (8000, 6000, 256, 8), (1001, 751, 64, 4),
    (1023, 767, 256, 2), (600, 511, 256, 1), (4032, 3024, 1024, 2), (4032, 3024, 2048, 1)])
def test_draft_scale_and_box(width: int, height: int, resize: int, scale: int) -> None:
    """The largest of 8, 4, 2 that leaves the image twice the resized size; 2 from twice the resize on
    the shorter side where none does; 1 (no draft) under that. The box is the full image's area."""
    assert image_files.draft_scale(width, height, resize) == scale
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "JPEG")
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    draft = image_files._draft(opened, resize)
    if scale == 1:
        assert draft is None and opened.size == (width, height)
        return
    target = image_files.resized_size(width, height, resize)
    assert draft == ((width, height), (0.0, 0.0, width / scale, height / scale))
    assert opened.size == (math.ceil(width / scale), math.ceil(height / scale))
    assert opened.size[0] >= target[0] and opened.size[1] >= target[1]


def test_captioner_decoding_choice(export_kit, tmp_path: Path) -> None:
    """``Captioner(fast_decode=False)`` decodes every pixel (exact torchvision parity); the default drafts."""
    from capkit.runtime import Captioner

    path = tmp_path / "large.jpg"
    jpeg(photo(160, 120), path)  # export_kit's spec resizes to 32: at least twice, so drafted by default
    bundle = export_kit.bundle("lstm")
    spec = bundle.manifest.preprocess
    exact, fast = preprocess(path, spec, fast_decode=False), preprocess(path, spec, fast_decode=True)
    assert not np.array_equal(exact, fast)
    assert np.array_equal(Captioner(bundle, device="cpu").preprocess(path), fast)
    assert np.array_equal(Captioner(bundle, device="cpu", fast_decode=False).preprocess(path), exact)
