"""Reading an image that may be hostile: a path, bytes, a uint8 array or a Pillow image -> an RGB Pillow image.

A path must name a regular file (a FIFO, a socket, a device or a folder is refused without being
read); the image's size is checked against :class:`~capkit.runtime.limits.Limits` from its header,
before its pixels are decoded; Pillow's decompression-bomb net, truncated files and broken EXIF
blocks give one-line :class:`ImageError` messages. EXIF orientation is applied and every mode is
converted to RGB. A large JPEG may be decoded at reduced scale by libjpeg (Pillow's ``draft``) when
it is resized at once (:func:`load_image_for_resize`, what :func:`capkit.runtime.preprocess.preprocess`
uses). The pixel math that follows (resize, crop, normalise) is :mod:`capkit.runtime.preprocess`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from typing import Any, Callable, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from capkit.runtime.errors import CapkitError, one_line
from capkit.runtime.errors import printable
from capkit.runtime.limits import DEFAULT_LIMITS, LimitError, Limits

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
DRAFT_FACTOR = 2  # reduce a JPEG whose shorter side is at least this many times the resize
DRAFT_OVERSAMPLE = 2  # the reduced image is this many times the resized size where a scale allows (then resized)
DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # what libjpeg decodes (MPO: a phone's multi-picture JPEG)
_PIXEL_CONVERSION_ROWS = 1 << 20  # pixels per strip when a mode conversion goes through numpy or compositing
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")  # the pixel count in Pillow's DecompressionBombError
# what a corrupt file raises from Pillow's decoders (besides Pillow's own errors)
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError)
Draft = tuple[tuple[int, int], tuple[float, float, float, float]]  # (full size, its box in the reduced image)


class ImageError(CapkitError):
    """An input that cannot be read as an image; the message names the problem in one line."""


class ImageLimitError(ImageError, LimitError):
    """An image over one of the :class:`~capkit.runtime.limits.Limits` (pixels, aspect ratio, resized size):
    both an :class:`ImageError` (callers that skip unreadable images skip it too) and a ``LimitError``."""


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


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side set to ``shorter`` as torchvision's Resize(int) computes it."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def _pillow_limit(name: str, pixels: Optional[int], limit: Optional[int], which: str) -> ImageError:
    """Pillow's own decompression-bomb net, one consistent line: the pixels, and the one limit they are over."""
    what = f"{pixels:,} pixels is" if pixels is not None else "the image is"
    over = f"Pillow's pixel limit of {limit:,} ({which})" if limit else "Pillow's pixel limit"
    return ImageError(f"{name}: refused as a possible decompression bomb: {what} over {over}")


def _bomb_pixels(error: BaseException) -> Optional[int]:
    """The pixel count a DecompressionBombError names, if it does."""
    found = _BOMB_PIXELS.search(str(error))
    return int(found.group(1)) if found else None


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, from its ``st_mode``: "a FIFO", "a socket", "a device" ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


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
            raise ImageError(f"{name}: not a regular file ({file_kind(mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _stream(source: ImageSource, name: str) -> io.IOBase:
    """The bytes of an encoded image: ``source``'s own (bytes) or its file's (a path, a regular file only)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            path = os.fspath(source)
        except Exception as e:  # a PathLike whose __fspath__ fails
            raise ImageError(f"{name}: cannot read: {one_line(e)}") from None
        if isinstance(path, (str, bytes)):
            return open_regular_file(path, name)
    if hasattr(source, "read"):  # a file object: reading it has no bound, and a caller keeps its position
        raise ImageError(f"unsupported image source of type {type(source).__name__} (a file object; pass its path, "
                         "or its bytes)")
    raise ImageError(f"unsupported image source of type {type(source).__name__}")


def _read_header(stream: io.IOBase, name: str, limits: Limits) -> Image.Image:
    """``Image.open``: the header only, its size checked against ``limits`` and Pillow's MAX_IMAGE_PIXELS."""
    try:
        with warnings.catch_warnings():
            # Pillow's warning band (over MAX_IMAGE_PIXELS, under twice that) is checked just below instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
    except Image.DecompressionBombError as e:  # over twice MAX_IMAGE_PIXELS: Pillow refuses before we can look
        pixels = _bomb_pixels(e)
        if pixels is not None and pixels > limits.max_image_pixels:
            raise ImageLimitError(f"{name}: {pixels:,} pixels, over the limit of {limits.max_image_pixels:,} "
                                  "(Limits.max_image_pixels; raise it to allow more)") from None
        limit = Image.MAX_IMAGE_PIXELS
        raise _pillow_limit(name, pixels, 2 * limit if limit else None, "twice PIL.Image.MAX_IMAGE_PIXELS") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: corrupt or unreadable image ({one_line(e)})") from None
    width, height = img.size
    check_image_size(name, width, height, limits)
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise _pillow_limit(name, width * height, Image.MAX_IMAGE_PIXELS, "PIL.Image.MAX_IMAGE_PIXELS")
    return img


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
        _load_pixels(source, name)
        return source, None
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise ImageError(f"an image array must be HxWx3 (or HxW, HxWx4) uint8, got {source.dtype} {source.shape}")
        check_image_size(name, source.shape[1], source.shape[0], limits)
        return Image.fromarray(source), None
    with _stream(source, name) as stream:
        img = _read_header(stream, name, limits)
        width, height = img.size  # the full size (a draft makes img.size the reduced one)
        draft = _draft(img, draft_shorter) if draft_shorter is not None else None
        try:
            img.load()  # decode now, so that truncated or corrupt files fail here
        except Image.DecompressionBombError as e:
            raise _pillow_limit(name, _bomb_pixels(e), None, "") from None
        except MemoryError:
            raise ImageError(f"{name}: out of memory decoding {width}x{height} pixels") from None
        except _CORRUPT as e:
            raise ImageError(f"{name}: corrupt or unreadable image ({one_line(e)})") from None
    return img, draft


def _load_pixels(img: Image.Image, name: str) -> None:
    """Decodes a caller's Pillow image now (a lazily opened one has read its header only), so that a closed
    image (its pixels gone) or a corrupt file behind a lazy one is one ImageError here, not an error of
    whatever touches the pixels later."""
    try:
        img.load()
    except MemoryError:
        raise ImageError(f"{name}: out of memory decoding {img.width}x{img.height} pixels") from None
    except ValueError as e:
        if "closed" in str(e):  # Pillow: "Operation on closed image"
            raise ImageError(f"{name}: the Pillow image is closed, its pixels are gone (caption it before closing "
                             "it)") from None
        raise ImageError(f"{name}: corrupt or unreadable image ({one_line(e)})") from None
    except _CORRUPT as e:
        raise ImageError(f"{name}: corrupt or unreadable image ({one_line(e)})") from None


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
    if img.mode == "La":  # premultiplied alpha: Pillow converts it to LA only
        img = img.convert("LA")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "RGBa"):
        return _composite_on_background(img)
    return img.convert("RGB")


def load_image(source: ImageSource, limits: Limits = DEFAULT_LIMITS) -> Image.Image:
    """An RGB Pillow image from a path, bytes, a Pillow image or a uint8 array.

    EXIF orientation is applied, animated GIF/WebP give their first frame, and every mode is
    converted by :func:`to_rgb`. The image's size is checked against ``limits`` (pixels, aspect ratio)
    from its header, before its pixels are decoded. Raises :class:`ImageError` with a one-line message
    (:class:`ImageLimitError`, also a ``LimitError``, for an image over a limit). A path must name a
    regular file: a folder, a FIFO, a socket or a device is refused without being read.

    The pixels are always decoded in full (never reduced, see :func:`load_image_for_resize`): training
    loads its images here, so that they match torchvision's transforms exactly.
    """
    return load_image_for_resize(source, None, limits)


def load_image_for_resize(source: ImageSource, resize: Optional[tuple[int, Image.Resampling]],
                          limits: Limits = DEFAULT_LIMITS) -> Image.Image:
    """:func:`load_image`; with ``resize`` (a shorter side, a Pillow filter), a large JPEG is decoded at
    reduced scale (see :func:`_open`) and resized at once to that shorter side, so that the image returned
    has the size a resize to it gives. Other images come back at their full size, as from load_image."""
    img, draft = _open(source, limits, resize[0] if resize is not None else None)
    name = source_name(source)
    try:
        if isinstance(source, Image.Image) and getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # a caller's image left on a later frame; an opened file is already on its first
        if draft is not None and resize is not None:
            # in the stored orientation, the EXIF block (which .convert and .resize keep) turned below; the
            # box is the full image's area in the reduced one (its last row and column may be partly padding)
            (full_width, full_height), box = draft
            img = to_rgb(img).resize(resized_size(full_width, full_height, resize[0]), resize[1], box=box)
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
    except _CORRUPT as e:
        raise ImageError(f"{name}: corrupt or unreadable image ({one_line(e)})") from None


__all__ = ["BACKGROUND", "DRAFT_FACTOR", "DRAFT_FORMATS", "DRAFT_OVERSAMPLE", "Draft", "ImageError", "ImageLimitError",
           "ImageSource", "check_image_size", "draft_scale", "file_kind", "load_image", "load_image_for_resize",
           "open_regular_file", "resized_size", "source_name", "to_rgb"]
