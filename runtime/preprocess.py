"""Image loading and preprocessing in numpy and Pillow: pure functions over module constants.

Training builds torchvision transforms from the same :class:`PreprocessSpec` and loads images
through :func:`load_image`, so an image goes through the same pixels in training, export checks
and the runtime. The spec travels in checkpoints and in a bundle's ``capkit.json``.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from capkit.runtime.errors import CapkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class ImageError(CapkitError):
    """An input that cannot be read as an image; the message names the problem in one line."""


@dataclass(frozen=True)
class PreprocessSpec:
    resize: int = 256  # shorter side after resizing, aspect ratio kept (torchvision Resize(int))
    crop: int = 224  # side of the square centre crop (torchvision CenterCrop)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, on [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # a key of INTERPOLATIONS

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; one of {', '.join(INTERPOLATIONS)}")
        if self.resize < 1 or self.crop < 1:
            raise ValueError("resize and crop must be positive")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        return cls(resize=int(data["resize"]), crop=int(data["crop"]), mean=tuple(data["mean"]),
                   std=tuple(data["std"]), interpolation=str(data.get("interpolation", "bilinear")))


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise ImageError(f"an image array must be HxWx3 (or HxW, HxWx4) uint8, got {source.dtype} {source.shape}")
        return Image.fromarray(source)
    if isinstance(source, (bytes, bytearray)):
        name, stream = "<bytes>", io.BytesIO(source)
    else:
        name, stream = str(source), source
        if not Path(source).is_file():
            raise ImageError(f"{name}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(stream)
            img.load()  # decode now, so that truncated or corrupt files fail here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused, larger than Pillow's pixel limit ({Image.MAX_IMAGE_PIXELS} pixels): {e}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: corrupt or unreadable image ({e})") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB for any Pillow mode: greyscale, 16-bit, CMYK, palette and alpha (composited onto white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        depth = 65535.0 if img.mode.startswith("I;16") else max(float(np.max(np.asarray(img))), 1.0)
        grey = np.asarray(img, dtype=np.float64) * (255.0 / (depth if depth > 255 else 255.0))
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img) * 255.0, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageSource) -> Image.Image:
    """An RGB Pillow image from a path, bytes, a Pillow image or a uint8 array.

    EXIF orientation is applied, animated GIF/WebP give their first frame, and every mode is
    converted by :func:`to_rgb`. Raises :class:`ImageError` with a one-line message.
    """
    img = _open(source)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block: keep the pixels as stored
        pass
    return to_rgb(img)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side set to ``shorter`` as torchvision's Resize(int) computes it."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize the shorter side to ``spec.resize``, then centre-crop ``spec.crop`` (padding with black if smaller)."""
    size = resized_size(img.width, img.height, spec.resize)
    if size != img.size:
        img = img.resize(size, INTERPOLATIONS[spec.interpolation])
    crop = spec.crop
    if img.width < crop or img.height < crop:  # torchvision pads symmetrically with zeros
        padded = Image.new("RGB", (max(crop, img.width), max(crop, img.height)))
        left, top = (padded.width - img.width) // 2, (padded.height - img.height) // 2
        padded.paste(img, (left, top))
        img = padded
    top = int(round((img.height - crop) / 2.0))
    left = int(round((img.width - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32: scaled to [0, 1], minus mean, over std."""
    x = pixels.astype(np.float32) / np.float32(255.0)  # (H, W, 3)
    x = x.transpose(2, 0, 1)  # (3, H, W)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]  # (3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]  # (3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)  # (3, H, W)


def preprocess(source: ImageSource, spec: PreprocessSpec) -> np.ndarray:
    """One image -> the encoder's input row, float32 (3, crop, crop)."""
    img = resize_and_crop(load_image(source), spec)
    return normalize(np.asarray(img, dtype=np.uint8), spec)


def preprocess_batch(sources: Sequence[ImageSource], spec: PreprocessSpec) -> np.ndarray:
    """Several images -> float32 (B, 3, crop, crop)."""
    return np.stack([preprocess(s, spec) for s in sources])
