"""Image loading and preprocessing in numpy and Pillow: pure functions over module constants.

Training builds torchvision transforms from the same :class:`PreprocessSpec` and loads images
through :func:`load_image`, so an image goes through the same pixels in training, export checks
and the runtime. The spec travels in checkpoints and in a bundle's ``capkit.json``.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from capkit.runtime.errors import CapkitError
from capkit.runtime.errors import printable
from capkit.runtime.limits import DEFAULT_LIMITS, LimitError, Limits

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


class ImageLimitError(ImageError, LimitError):
    """An image over one of the :class:`~capkit.runtime.limits.Limits` (pixels, aspect ratio, resized size):
    both an :class:`ImageError` (callers that skip unreadable images skip it too) and a ``LimitError``."""


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
# Fast decoding of large JPEGs (see preprocess): on by default, chosen by benchmarks/phone_photos.py
FAST_DECODE = True
DRAFT_FACTOR = 2  # reduce a JPEG whose shorter side is at least this many times the spec's resize
DRAFT_OVERSAMPLE = 2  # the reduced image is this many times the resized size where a scale allows (then resized)
DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # what libjpeg decodes (MPO: a phone's multi-picture JPEG)
_PIXEL_CONVERSION_ROWS = 1 << 20  # pixels per strip when a mode conversion goes through numpy or compositing


def source_name(source: Any) -> str:
    """How messages name an image source: the path or a Pillow image's file name (control characters
    escaped, so that a message stays one line), else ``<bytes>``, ``<array>``, ``<image>``."""
    try:
        if isinstance(source, (str, os.PathLike)):
            return printable(os.fsdecode(os.fspath(source)))
    except Exception:  # a PathLike whose __fspath__ fails or gives neither str nor bytes
        return f"<{type(source).__name__}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", None)
        return printable(str(filename)) if filename else "<image>"
    return f"<{type(source).__name__}>"


def check_image_size(name: str, width: int, height: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuses, before anything is decoded, an image with an empty side, more than ``limits.max_image_pixels``
    pixels or a long side more than ``limits.max_aspect_ratio`` times its short side."""
    if width < 1 or height < 1:
        raise ImageError(f"{name}: empty image ({width}x{height} pixels)")
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise ImageLimitError(f"{name}: {width}x{height} is {pixels:,} pixels, over the limit of "
                              f"{limits.max_image_pixels:,} (Limits.max_image_pixels; raise it to allow more)")
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > limits.max_aspect_ratio:
        raise ImageLimitError(f"{name}: {width}x{height} has an aspect ratio of {ratio:,.1f}:1, over the limit of "
                              f"{limits.max_aspect_ratio:g}:1 (Limits.max_aspect_ratio; raise it to allow more)")


def _pillow_limit(name: str, pixels: Optional[int], limit: Optional[int], which: str) -> ImageError:
    """Pillow's own decompression-bomb net, one consistent line: the pixels, and the one limit they are over."""
    what = f"{pixels:,} pixels is" if pixels is not None else "the image is"
    over = f"Pillow's pixel limit of {limit:,} ({which})" if limit else "Pillow's pixel limit"
    return ImageError(f"{name}: refused as a possible decompression bomb: {what} over {over}")


def open_regular_file(path: Union[str, bytes], name: str) -> io.BufferedReader:
    """The file at ``path`` opened for reading, refused unless it is a regular file. Opened without blocking
    (a FIFO would wait for a writer) and checked on the open descriptor, so nothing can swap it in between."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image file") from None
    except (OSError, ValueError) as e:  # a symlink loop, no permission, a NUL in the name, a name too long ...
        raise ImageError(f"{name}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ImageError(f"{name}: is a folder, not an image file")
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
                    "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
            raise ImageError(f"{name}: not a regular file ({kind})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


Draft = tuple[tuple[int, int], tuple[float, float, float, float]]  # (full size, its box in the reduced image)


def _open(source: ImageSource, limits: Limits = DEFAULT_LIMITS,
          draft_shorter: Optional[int] = None) -> tuple[Image.Image, Optional[Draft]]:
    """A decoded Pillow image (any mode), its size checked against ``limits`` before its pixels are decoded.

    ``draft_shorter``: when given, a JPEG file (path or bytes) whose shorter side is at least
    DRAFT_FACTOR times it is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (Pillow's
    ``draft``), the smallest scale still at least ``resized_size(..., draft_shorter)``; the second
    item then says so: (the full size, the area of the full image in the reduced one), else None.
    A caller's Pillow image is never reduced (that would change the caller's object)."""
    name = source_name(source)
    if isinstance(source, Image.Image):
        check_image_size(name, *source.size, limits)  # a lazily opened image still has only its header read
        return source, None
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise ImageError(f"an image array must be HxWx3 (or HxW, HxWx4) uint8, got {source.dtype} {source.shape}")
        check_image_size(name, source.shape[1], source.shape[0], limits)
        return Image.fromarray(source), None
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream: Any = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            path = os.fspath(source)
        except Exception as e:  # a PathLike whose __fspath__ fails
            raise ImageError(f"{name}: cannot read: {_one_line(e)}") from None
        if isinstance(path, (str, bytes)):
            stream = open_regular_file(path, name)
        else:
            raise ImageError(f"unsupported image source of type {type(source).__name__}")
    else:
        raise ImageError(f"unsupported image source of type {type(source).__name__}")
    with stream:
        try:
            with warnings.catch_warnings():
                # Pillow's warning band (over MAX_IMAGE_PIXELS, under twice that) is checked just below instead
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(stream)  # the header only
        except Image.DecompressionBombError as e:  # over twice MAX_IMAGE_PIXELS: Pillow refuses before we can look
            found = _BOMB_PIXELS.search(str(e))
            pixels = int(found.group(1)) if found else None
            if pixels is not None and pixels > limits.max_image_pixels:
                raise ImageLimitError(f"{name}: {pixels:,} pixels, over the limit of {limits.max_image_pixels:,} "
                                      "(Limits.max_image_pixels; raise it to allow more)") from None
            limit = Image.MAX_IMAGE_PIXELS
            raise _pillow_limit(name, pixels, 2 * limit if limit else None, "twice PIL.Image.MAX_IMAGE_PIXELS") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file Pillow can read") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"{name}: corrupt or unreadable image ({_one_line(e)})") from None
        width, height = img.size
        check_image_size(name, width, height, limits)
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            raise _pillow_limit(name, width * height, Image.MAX_IMAGE_PIXELS, "PIL.Image.MAX_IMAGE_PIXELS")
        draft = _draft(img, draft_shorter) if draft_shorter is not None else None
        try:
            img.load()  # decode now, so that truncated or corrupt files fail here
        except Image.DecompressionBombError as e:
            found = _BOMB_PIXELS.search(str(e))
            raise _pillow_limit(name, int(found.group(1)) if found else None, None, "") from None
        except MemoryError:
            raise ImageError(f"{name}: out of memory decoding {width}x{height} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError) as e:
            raise ImageError(f"{name}: corrupt or unreadable image ({_one_line(e)})") from None
    return img, draft


def draft_scale(width: int, height: int, shorter: int) -> int:
    """The scale (1, 2, 4 or 8) at which fast decoding reads a ``width`` x ``height`` JPEG for a resize
    of its shorter side to ``shorter``: the largest that leaves the image DRAFT_OVERSAMPLE times the
    resized size, so that the final resize still averages a few pixels per pixel; 2 for an image at
    least DRAFT_FACTOR times ``shorter`` on its shorter side where no scale leaves that much; else 1."""
    if min(width, height) < DRAFT_FACTOR * shorter:
        return 1
    target_width, target_height = resized_size(width, height, shorter)
    for scale in (8, 4, 2):
        if width // scale >= DRAFT_OVERSAMPLE * target_width and height // scale >= DRAFT_OVERSAMPLE * target_height:
            return scale
    return 2


def _draft(img: Image.Image, shorter: int) -> Optional[Draft]:
    """Asks libjpeg to decode ``img`` (opened, not loaded) at :func:`draft_scale` when it is a JPEG;
    the :data:`Draft` when it will, else None."""
    width, height = img.size
    scale = draft_scale(width, height, shorter)
    if img.format not in DRAFT_FORMATS or scale == 1:
        return None
    try:  # Pillow picks the largest scale that keeps the image at least the size asked for: this one
        result = img.draft("RGB", (max(1, width // scale), max(1, height // scale)))  # the mode stays (L, RGB, CMYK)
    except Exception:  # an odd JPEG Pillow cannot reduce: decode it in full, as without a draft
        return None
    if result is None or img.size == (width, height):
        return None
    return (width, height), tuple(float(v) for v in result[1])  # type: ignore[return-value]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _grey_to_rgb(img: Image.Image, scale: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """An "I;16", "I" or "F" image -> RGB, converted strip by strip (a float64 copy of a whole large image
    would cost 8 bytes a pixel); ``scale`` maps one strip of raw values (H', W) to uint8."""
    width, height = img.size
    grey = np.empty((height, width), np.uint8)
    step = max(1, _PIXEL_CONVERSION_ROWS // max(width, 1))
    for top in range(0, height, step):
        grey[top:top + step] = scale(np.asarray(img.crop((0, top, width, min(height, top + step)))))
    return Image.fromarray(grey, "L").convert("RGB")


def _composite_on_background(img: Image.Image) -> Image.Image:
    """An image with alpha (or a palette with a transparent index) composited onto BACKGROUND, strip by strip."""
    if img.mode == "P":
        img = img.convert("RGBA")  # the palette's transparency is read once, for the whole image
    width, height = img.size
    out = Image.new("RGB", img.size)
    step = max(1, _PIXEL_CONVERSION_ROWS // max(width, 1))
    for top in range(0, height, step):
        box = (0, top, width, min(height, top + step))
        part = img.crop(box).convert("RGBA")
        background = Image.new("RGBA", part.size, BACKGROUND + (255,))
        out.paste(Image.alpha_composite(background, part).convert("RGB"), box[:2])
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB for any Pillow mode: greyscale, 16-bit, CMYK, palette and alpha (composited onto white).

    Large images are converted in strips of rows, so a conversion costs about one RGB copy of the image."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        depth = 65535.0 if img.mode.startswith("I;16") else max(float(img.getextrema()[1]), 1.0)
        factor = 255.0 / (depth if depth > 255 else 255.0)
        return _grey_to_rgb(img, lambda v: np.clip(np.rint(v.astype(np.float64) * factor), 0, 255).astype(np.uint8))
    if img.mode == "F":
        return _grey_to_rgb(img, lambda v: np.clip(v * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return _composite_on_background(img)
    return img.convert("RGB")


def load_image(source: ImageSource, limits: Limits = DEFAULT_LIMITS) -> Image.Image:
    """An RGB Pillow image from a path, bytes, a Pillow image or a uint8 array.

    EXIF orientation is applied, animated GIF/WebP give their first frame, and every mode is
    converted by :func:`to_rgb`. The image's size is checked against ``limits`` (pixels, aspect ratio)
    from its header, before its pixels are decoded. Raises :class:`ImageError` with a one-line message
    (:class:`ImageLimitError`, also a ``LimitError``, for an image over a limit). A path must name a
    regular file: a folder, a FIFO, a socket or a device is refused without being read.

    The pixels are always decoded in full (never reduced, see :func:`preprocess`'s ``fast_decode``):
    training loads its images here, so that they match torchvision's transforms exactly.
    """
    return _load(source, limits)


def _load(source: ImageSource, limits: Limits = DEFAULT_LIMITS, reduce_for: Optional[PreprocessSpec] = None) -> Image.Image:
    """:func:`load_image`; with ``reduce_for``, a large JPEG is decoded at reduced scale (see :func:`_open`)
    and resized at once to ``reduce_for``'s resized size, so that the image returned has that size."""
    img, draft = _open(source, limits, reduce_for.resize if reduce_for is not None else None)
    name = source_name(source)
    try:
        if isinstance(source, Image.Image) and getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # a caller's image left on a later frame; an opened file is already on its first
        if draft is not None and reduce_for is not None:
            # in the stored orientation, the EXIF block (which .convert and .resize keep) turned below; the
            # box is the full image's area in the reduced one (its last row and column may be partly padding)
            (full_width, full_height), box = draft
            img = to_rgb(img).resize(resized_size(full_width, full_height, reduce_for.resize),
                                     INTERPOLATIONS[reduce_for.interpolation], box=box)
        try:
            img = ImageOps.exif_transpose(img)
        except MemoryError:
            raise
        except Exception:  # a broken EXIF block: keep the pixels as stored
            pass
        check_image_size(name, *img.size, limits)
        return to_rgb(img)
    except CapkitError:
        raise
    except MemoryError:
        raise ImageError(f"{name}: out of memory converting {img.width}x{img.height} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError) as e:
        raise ImageError(f"{name}: corrupt or unreadable image ({_one_line(e)})") from None


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


def preprocess(source: ImageSource, spec: PreprocessSpec, limits: Limits = DEFAULT_LIMITS, *,
               fast_decode: Optional[bool] = None) -> np.ndarray:
    """One image -> the encoder's input row, float32 (3, crop, crop).

    Besides :func:`load_image`'s checks, the resized image (shorter side ``spec.resize``) must also fit
    in ``limits.max_image_pixels``, so that a small image with a long side cannot grow past it.

    ``fast_decode`` (None: :data:`FAST_DECODE`): a JPEG file (path or bytes) at least DRAFT_FACTOR
    times ``spec.resize`` on its shorter side, a phone photo, is decoded at 1/2, 1/4 or 1/8 scale by
    libjpeg's DCT scaling (:func:`draft_scale`), then resized as always: for a 12-megapixel photo
    several times faster and 16 times fewer pixels, within a few 8-bit levels of full decoding
    (benchmarks/phone_photos.py measures it). False: every image decoded in full, bit-identical to
    torchvision's transforms on :func:`load_image`'s image (what training sees). Other formats,
    arrays, Pillow images and smaller JPEGs are decoded in full either way."""
    fast = FAST_DECODE if fast_decode is None else bool(fast_decode)
    img = _load(source, limits, spec if fast else None)
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
