"""The benchmark's images: files named by the user (through the runtime's one image lister,
:func:`capkit.bulk.listing.expand_inputs`), or synthetic photos of a typical photo's size, so
that reading and resizing cost what they do in use; and phone-size photos (12-megapixel JPEGs of
about 2 MB, :data:`PHONE_PHOTO_SIZE`), timed apart from the others."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from capkit.bench.stats import BenchError
from capkit.bulk.listing import expand_inputs

SYNTHETIC_PHOTO_SIZE = (640, 480)  # (width, height): a typical photo
DEFAULT_SYNTHETIC_COUNT = 8
PHONE_PHOTO_SIZE = (4032, 3024)  # (width, height): a 12-megapixel phone photo
PHONE_PHOTO_NOISE = 5.5  # noise of the phone photos: about 2.1 MB each at quality 90, like a phone's
DEFAULT_PHONE_PHOTOS = 2  # phone photos added to the synthetic ones by default
NOISE_TILE = 1024  # side of the noise tile of a synthetic photo (larger photos repeat it)


def synthetic_photos(folder: Union[str, os.PathLike], count: int = DEFAULT_SYNTHETIC_COUNT,
                     size: tuple[int, int] = SYNTHETIC_PHOTO_SIZE, seed: int = 0, noise: float = 8.0,
                     prefix: str = "photo") -> list[str]:
    """``count`` photo-sized JPEG files (gradients, shapes and noise) in ``folder``; their paths.

    The scene scales with ``size`` (the gradients' periods are relative to 640x480), so a large photo
    looks like a small one taken at a higher resolution; ``noise``: the standard deviation of the
    Gaussian noise, in 8-bit levels (what mostly sets the file size)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.arange(width, dtype=np.float32)[None, :, None] * np.float32(SYNTHETIC_PHOTO_SIZE[0] / width)  # (1, W, 1)
    y = np.arange(height, dtype=np.float32)[:, None, None] * np.float32(SYNTHETIC_PHOTO_SIZE[1] / height)  # (H, 1, 1)
    paths = []
    for i in range(count):
        base = rng.integers(0, 256, 3).astype(np.float32)
        columns = 80 * np.sin(x / np.float32(rng.uniform(20, 90)) + rng.uniform(0, 6, 3).astype(np.float32))  # (1, W, 3)
        rows = 60 * np.cos(y / np.float32(rng.uniform(20, 90)))  # (H, 1, 1)
        pixels = base + columns + rows  # (H, W, 3) float32
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        pixels[top:top + height // 3, left:left + width // 3] = rng.integers(0, 256, 3)
        tile = rng.standard_normal((min(height, NOISE_TILE), min(width, NOISE_TILE), 3), dtype=np.float32)
        tile *= np.float32(noise)
        for top in range(0, height, NOISE_TILE):  # one tile of noise repeated: drawing 36M numbers takes seconds
            for left in range(0, width, NOISE_TILE):
                part = pixels[top:top + NOISE_TILE, left:left + NOISE_TILE]
                part += tile[:part.shape[0], :part.shape[1]]
        path = folder / f"{prefix}-{i:02d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def phone_photos(folder: Union[str, os.PathLike], count: int = DEFAULT_PHONE_PHOTOS, seed: int = 1) -> list[str]:
    """``count`` 12-megapixel JPEG files (:data:`PHONE_PHOTO_SIZE`, about 2 MB each) in ``folder``."""
    return synthetic_photos(folder, count, PHONE_PHOTO_SIZE, seed=seed, noise=PHONE_PHOTO_NOISE, prefix="phone")


class ImageSet:
    """The benchmark's images: the files named by ``arguments`` (files, folders, glob patterns), or
    ``count`` synthetic photos in a temporary folder (removed on close). An argument that names no
    image is a BenchError.

    ``phones``: how many phone-size photos (:func:`phone_photos`, 12-megapixel JPEGs) to add in
    :attr:`phone_paths`, timed apart from :attr:`paths` (None: DEFAULT_PHONE_PHOTOS with the
    synthetic photos, none with named files)."""

    def __init__(self, arguments: Sequence[Union[str, os.PathLike]] = (), count: int = DEFAULT_SYNTHETIC_COUNT,
                 phones: Optional[int] = None):
        self._tmp: Optional[str] = None
        self.phone_paths: list[str] = []
        if arguments:
            self.paths = _named_images(arguments)
            self.synthetic = False
        else:
            self._tmp = tempfile.mkdtemp(prefix="capkit-bench-")
            self.paths = synthetic_photos(self._tmp, count)
            self.synthetic = True
        phones = (DEFAULT_PHONE_PHOTOS if self.synthetic else 0) if phones is None else phones
        if phones:
            if self._tmp is None:
                self._tmp = tempfile.mkdtemp(prefix="capkit-bench-")
            self.phone_paths = phone_photos(self._tmp, phones)

    def describe(self) -> str:
        if self.synthetic:
            text = f"{len(self.paths)} synthetic {SYNTHETIC_PHOTO_SIZE[0]}x{SYNTHETIC_PHOTO_SIZE[1]} JPEG photos"
        else:
            text = f"{len(self.paths)} image files"
        if self.phone_paths:
            text += (f" + {len(self.phone_paths)} synthetic {PHONE_PHOTO_SIZE[0]}x{PHONE_PHOTO_SIZE[1]} JPEG phone "
                     "photos (timed apart)")
        return text

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "ImageSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _named_images(arguments: Sequence[Union[str, os.PathLike]]) -> list[str]:
    paths = []
    for item in expand_inputs(arguments):
        if item.error is not None:
            raise BenchError(item.error)
        paths.append(item.path)
    if not paths:
        raise BenchError(f"no images in {', '.join(map(os.fspath, arguments))}")
    return paths


__all__ = ["DEFAULT_PHONE_PHOTOS", "DEFAULT_SYNTHETIC_COUNT", "ImageSet", "PHONE_PHOTO_SIZE", "SYNTHETIC_PHOTO_SIZE",
           "phone_photos", "synthetic_photos"]
