"""The runtime's numpy/Pillow preprocessing against torchvision, and the odd image files it must read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from capkit.runtime.image_files import ImageError, load_image
from capkit.runtime.preprocess import PreprocessSpec, preprocess, preprocess_batch

transforms = pytest.importorskip("torchvision.transforms")

SPECS = [
    PreprocessSpec(resize=32, crop=32),
    PreprocessSpec(resize=40, crop=32),
    PreprocessSpec(resize=24, crop=32),  # the resized image is smaller than the crop: padded with black
    PreprocessSpec(resize=256, crop=224),  # the default ImageNet setting
    PreprocessSpec(resize=37, crop=31, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)),  # odd sizes, custom stats
    PreprocessSpec(resize=48, crop=40, interpolation="bicubic"),
]
SIZES = [(64, 48), (48, 64), (300, 10), (10, 300), (20, 20), (17, 9), (1, 1), (224, 224), (257, 255)]  # (W, H)


def torchvision_preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    mode = transforms.InterpolationMode[spec.interpolation.upper()]
    pipeline = transforms.Compose([
        transforms.Resize(spec.resize, interpolation=mode),
        transforms.CenterCrop(spec.crop),
        transforms.ToTensor(),
        transforms.Normalize(spec.mean, spec.std),
    ])
    return pipeline(img).numpy()


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


# --- parity with torchvision ------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.resize}-{s.crop}-{s.interpolation}")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_torchvision(spec: PreprocessSpec, size: tuple[int, int]) -> None:
    pixels = noise(*size, seed=size[0] * 1000 + size[1])
    ours = preprocess(pixels, spec)
    reference = torchvision_preprocess(load_image(pixels), spec)
    assert ours.shape == reference.shape == (3, spec.crop, spec.crop)
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-6


def test_padding_is_black_like_torchvision() -> None:
    spec = PreprocessSpec(resize=24, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = preprocess(np.full((24, 24, 3), 200, np.uint8), spec)
    assert np.allclose(out[:, :4, :], 0.0) and np.allclose(out[:, :, :4], 0.0)  # the border
    assert np.allclose(out[:, 4:28, 4:28], 200 / 255)


def test_every_source_kind_gives_the_same_pixels(tmp_path: Path) -> None:
    pixels = noise(50, 40, seed=3)
    data = encoded(Image.fromarray(pixels), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    spec = SPECS[1]
    expected = preprocess(pixels, spec)
    for source in (path, str(path), data, Image.fromarray(pixels)):
        assert np.array_equal(preprocess(source, spec), expected)
    batch = preprocess_batch([path, pixels], spec)
    assert batch.shape == (2, 3, 32, 32) and np.array_equal(batch[0], batch[1])


# --- odd image kinds --------------------------------------------------------------------------

def two_colour(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: any rotation or flip shows."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(a)


@pytest.mark.parametrize("orientation, transpose", [
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_270),  # stored sideways; shown rotated 90 degrees clockwise
    (8, Image.Transpose.ROTATE_90),
    (2, Image.Transpose.FLIP_LEFT_RIGHT),
])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, transpose: Image.Transpose) -> None:
    stored = two_colour()
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif, quality=95)
    assert Image.open(path).getexif()[0x0112] == orientation

    loaded = load_image(path)
    assert loaded.mode == "RGB"
    expected = np.asarray(Image.open(path).convert("RGB").transpose(transpose), dtype=np.int16)
    assert loaded.size == (expected.shape[1], expected.shape[0])
    assert loaded.size == ((20, 40) if orientation in (6, 8) else (40, 20))
    assert np.abs(np.asarray(loaded, dtype=np.int16) - expected).max() == 0
    if orientation == 6:  # the red left half ends up on top
        top, bottom = np.asarray(loaded)[5, 10], np.asarray(loaded)[35, 10]
        assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (30, 20), dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, "L").save(path)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (30, 20, 3)
    for c in range(3):
        assert np.array_equal(loaded[..., c], grey)


def test_rgba_transparent_pixels_become_white(tmp_path: Path) -> None:
    a = np.zeros((10, 10, 4), np.uint8)
    a[..., :3] = (10, 200, 30)
    a[:, :5, 3] = 0  # left half fully transparent (its colour must not show)
    a[:, 5:, 3] = 255  # right half opaque
    a[0, 9, 3] = 128  # one half-transparent pixel: blended with white
    path = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)
    loaded = np.asarray(load_image(path)).astype(int)
    assert (loaded[:, :5] == 255).all()
    assert (loaded[1:, 5:] == (10, 200, 30)).all()
    assert np.abs(loaded[0, 9] - np.array([(10 + 255) / 2, (200 + 255) / 2, (30 + 255) / 2])).max() <= 1.5


def test_palette_with_transparency_composited_onto_white(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 9))
    for x in range(4):
        for y in range(8):
            img.putpixel((x, y), 0)  # index 0: transparent black
    img.putpixel((7, 7), 2)
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    loaded = np.asarray(load_image(path))
    assert (loaded[:, :4] == 255).all()  # transparent index -> white, not black
    assert tuple(loaded[0, 5]) == (200, 0, 0)
    assert tuple(loaded[7, 7]) == (0, 200, 0)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    loaded = np.asarray(load_image(path)).astype(int)
    assert loaded.shape == (16, 16, 3)
    assert np.abs(loaded - np.array([255, 0, 0])).max() <= 8


def test_sixteen_bit_png_scaled_to_eight_bits(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 32768], [128, 25700, 65280, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    loaded = np.asarray(load_image(path))
    expected = np.rint(values / 65535.0 * 255.0).astype(np.uint8)  # 257 -> 1, 65535 -> 255, 32768 -> 128
    assert np.array_equal(loaded[..., 0], expected)
    assert np.array_equal(loaded[..., 1], expected) and np.array_equal(loaded[..., 2], expected)
    assert tuple(expected[0]) == (0, 1, 255, 128)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    params = {"lossless": True} if fmt == "WEBP" else {}
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(tmp_path: Path, fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    data = animated(fmt)
    path = tmp_path / f"anim.{fmt.lower()}"
    path.write_bytes(data)
    opened = Image.open(path)
    assert opened.n_frames == 3
    opened.seek(2)  # a Pillow image left on a later frame still gives the first
    for source in (path, data, opened):
        loaded = np.asarray(load_image(source)).astype(int)
        assert loaded.shape == (12, 12, 3)
        assert np.abs(loaded - np.array([255, 0, 0])).max() <= 2, source


# --- errors: ImageError with one line naming the file ----------------------------------------

def assert_one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message
    for word in words:
        assert word in message, (word, message)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "nope.jpg")
    assert_one_line(e, "nope.jpg", "no such file")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 10)
    with pytest.raises(ImageError) as e:
        preprocess(path, SPECS[0])
    assert_one_line(e, "notes.jpg", "not an image")


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "header-only", "empty"])
def test_damaged_png(tmp_path: Path, damage: str) -> None:
    data = encoded(Image.fromarray(noise(64, 64)), "PNG")
    broken = {"truncated": data[: len(data) // 2], "corrupt": data[:100] + bytes(200) + data[300:],
              "header-only": data[:20], "empty": b""}[damage]
    path = tmp_path / f"{damage}.png"
    path.write_bytes(broken)
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert_one_line(e, f"{damage}.png")


@pytest.mark.parametrize("limit", [1000, 3000])  # 4096 pixels: over twice the limit (error) / over it (warning)
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    path = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert_one_line(e, "bomb.png", "pixel limit")


def test_bad_arrays() -> None:
    for array in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)):
        with pytest.raises(ImageError):
            load_image(array)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as e:
        load_image(tmp_path)
    assert_one_line(e, str(tmp_path))
