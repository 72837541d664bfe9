"""Preprocessing in numpy and Pillow: the spec (:class:`PreprocessSpec`) and the pixel math that follows
loading (resize, centre crop, normalise), pure functions over module constants.

Training builds torchvision transforms from the same :class:`PreprocessSpec` and loads images
through :func:`~capkit.runtime.image_files.load_image`, so an image goes through the same pixels in
training, export checks and the runtime. The spec travels in checkpoints and in a bundle's
``capkit.json``. Reading the (possibly hostile) image files is :mod:`capkit.runtime.image_files`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from capkit.runtime.errors import CapkitError
from capkit.runtime.image_files import (ImageError, ImageLimitError, ImageSource, load_image_for_resize, resized_size,
                                        source_name)
from capkit.runtime.limits import DEFAULT_LIMITS, Limits

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fast decoding of large JPEGs (see preprocess): on by default, chosen by reports/phone_photos.py
FAST_DECODE = True

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# what mean and std must be besides finite numbers, as messages say it (the JavaScript runtime says the same)
FLOAT32_RULES = {"mean": "must be 3 numbers that are finite in float32",
                 "std": "must be 3 numbers > 0 for which (x - mean) / std is finite in float32 for pixels x from 0 to 1"}


class PreprocessError(CapkitError):
    """A preprocessing spec with a value of the wrong type or out of range; the message names the field."""


@dataclass(frozen=True)
class PreprocessSpec:
    resize: int = 256  # shorter side after resizing, aspect ratio kept (torchvision Resize(int))
    crop: int = 224  # side of the square centre crop (torchvision CenterCrop)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, on [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # a key of INTERPOLATIONS

    KEYS = ("resize", "crop", "mean", "std", "interpolation")  # not a field: no annotation

    def __post_init__(self) -> None:
        """Every value's type and range, once: integers >= 1, three finite numbers (std > 0), a known
        filter. Raises PreprocessError naming ``preprocess.<field>`` in one line."""
        from reprlib import repr as short  # a bounded repr: a hostile value may be huge

        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise PreprocessError(f"preprocess.interpolation: must be one of {', '.join(INTERPOLATIONS)}, "
                                  f"got {short(self.interpolation)}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
                raise PreprocessError(f"preprocess.{name}: must be an integer >= 1, got {short(value)}")
            object.__setattr__(self, name, int(value))
        for name, positive in (("mean", False), ("std", True)):
            values = getattr(self, name)
            if not (isinstance(values, (list, tuple, np.ndarray)) and len(values) == 3
                    and all(self._finite(v) and (not positive or v > 0) for v in values)):
                raise PreprocessError(f"preprocess.{name}: must be 3 finite numbers{' > 0' if positive else ''}, "
                                      f"got {short(values)}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
            if not self._finite_in_float32(name):
                raise PreprocessError(f"preprocess.{name}: " + FLOAT32_RULES[name] + f", got {short(values)}")

    def _finite_in_float32(self, name: str) -> bool:
        """Whether ``mean`` (checked first), or ``std``, keeps :func:`normalize`'s float32 arithmetic finite:
        (x - mean) / std for pixels x from 0 to 1. A value can pass in float64 and fail there: a std of 1e-300
        is 0 in float32, a mean of 1e39 is infinite."""
        with np.errstate(all="ignore"):  # the overflow or division by zero is what is looked for, quietly
            mean = np.asarray(self.mean, np.float32)  # (3,)
            if name == "mean":
                return bool(np.isfinite(mean).all())
            ends = (np.float32([[0.0], [1.0]]) - mean) / np.asarray(self.std, np.float32)  # (2, 3): darkest, brightest
            return bool(np.isfinite(ends).all())

    @staticmethod
    def _finite(value: Any) -> bool:
        """A real number (not a bool, not a string) that is neither infinite nor NaN, nor too big for a float."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        try:
            return abs(float(value)) < float("inf")  # False for NaN too
        except OverflowError:  # an int beyond float's range
            return False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        """The spec of a checkpoint or a manifest: an object with resize, crop, mean, std and, optionally,
        interpolation (default bilinear); other keys are refused (they could change the pixels)."""
        if not isinstance(data, dict):
            raise PreprocessError(f"preprocess: must be an object, got {type(data).__name__}")
        unknown = [str(key) for key in data if key not in cls.KEYS]
        if unknown:
            raise PreprocessError(f"preprocess: unknown key {unknown[0][:40]!r} (known: {', '.join(cls.KEYS)})")
        missing = [key for key in cls.KEYS[:4] if key not in data]
        if missing:
            raise PreprocessError(f"preprocess.{missing[0]}: missing")
        return cls(resize=data["resize"], crop=data["crop"], mean=data["mean"], std=data["std"],
                   interpolation=data.get("interpolation", "bilinear"))


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


def preprocess(source: ImageSource, spec: PreprocessSpec, limits: Limits = DEFAULT_LIMITS, *,
               fast_decode: Optional[bool] = None) -> np.ndarray:
    """One image -> the encoder's input row, float32 (3, crop, crop).

    Besides :func:`~capkit.runtime.image_files.load_image`'s checks, the resized image (shorter side
    ``spec.resize``) must also fit in ``limits.max_image_pixels``, so that a small image with a long
    side cannot grow past it.

    ``fast_decode`` (None: :data:`FAST_DECODE`): a JPEG file (path or bytes) at least DRAFT_FACTOR
    times ``spec.resize`` on its shorter side, a phone photo, is decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg's DCT scaling (:func:`~capkit.runtime.image_files.draft_scale`), then resized as always:
    for a 12-megapixel photo several times faster and 16 times fewer pixels, within a few 8-bit
    levels of full decoding (reports/phone_photos.py measures it). False: every image decoded in
    full, bit-identical to torchvision's transforms on ``load_image``'s image (what training sees).
    Other formats, arrays, Pillow images and smaller JPEGs are decoded in full either way."""
    fast = FAST_DECODE if fast_decode is None else bool(fast_decode)
    resize = (spec.resize, INTERPOLATIONS[spec.interpolation]) if fast else None  # None: decode in full
    img = load_image_for_resize(source, resize, limits)
    width, height = resized_size(img.width, img.height, spec.resize)
    if width * height > limits.max_image_pixels:
        raise ImageLimitError(f"{source_name(source)}: {img.width}x{img.height} resized to a shorter side of "
                              f"{spec.resize} would be {width}x{height} = {width * height:,} pixels, over the limit of "
                              f"{limits.max_image_pixels:,} (Limits.max_image_pixels; raise it to allow more)")
    try:
        img = resize_and_crop(img, spec)
    except MemoryError:
        raise ImageError(f"{source_name(source)}: out of memory resizing {img.width}x{img.height} to "
                         f"{width}x{height} pixels") from None
    return normalize(np.asarray(img, dtype=np.uint8), spec)


def preprocess_batch(sources: Sequence[ImageSource], spec: PreprocessSpec,
                     limits: Limits = DEFAULT_LIMITS, *, fast_decode: Optional[bool] = None) -> np.ndarray:
    """Several images -> float32 (B, 3, crop, crop)."""
    return np.stack([preprocess(s, spec, limits, fast_decode=fast_decode) for s in sources])

