"""The benchmark's images: files named by the user (through the runtime's one image lister,
:func:`capkit.runtime.inputs.expand_inputs`), or synthetic photos of a typical photo's size, so
that reading and resizing cost what they do in use."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from capkit.bench.stats import BenchError
from capkit.runtime.inputs import expand_inputs

SYNTHETIC_PHOTO_SIZE = (640, 480)  # (width, height): a typical photo
DEFAULT_SYNTHETIC_COUNT = 8


def synthetic_photos(folder: Union[str, os.PathLike], count: int = DEFAULT_SYNTHETIC_COUNT,
                     size: tuple[int, int] = SYNTHETIC_PHOTO_SIZE, seed: int = 0) -> list[str]:
    """``count`` photo-sized JPEG files (gradients, shapes and noise) in ``folder``; their paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    paths = []
    for i in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = rng.integers(0, 256, 3)
        pixels = (base + 80 * np.sin(x[..., None] / rng.uniform(20, 90) + rng.uniform(0, 6, 3))
                  + 60 * np.cos(y[..., None] / rng.uniform(20, 90)))  # (H, W, 3)
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        pixels[top:top + height // 3, left:left + width // 3] = rng.integers(0, 256, 3)
        pixels += rng.normal(0, 8, pixels.shape)
        path = folder / f"photo-{i:02d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


class ImageSet:
    """The benchmark's images: the files named by ``arguments`` (files, folders, glob patterns), or
    ``count`` synthetic photos in a temporary folder (removed on close). An argument that names no
    image is a BenchError."""

    def __init__(self, arguments: Sequence[Union[str, os.PathLike]] = (), count: int = DEFAULT_SYNTHETIC_COUNT):
        self._tmp: Optional[str] = None
        if arguments:
            self.paths = _named_images(arguments)
            self.synthetic = False
        else:
            self._tmp = tempfile.mkdtemp(prefix="capkit-bench-")
            self.paths = synthetic_photos(self._tmp, count)
            self.synthetic = True

    def describe(self) -> str:
        if self.synthetic:
            return f"{len(self.paths)} synthetic {SYNTHETIC_PHOTO_SIZE[0]}x{SYNTHETIC_PHOTO_SIZE[1]} JPEG photos"
        return f"{len(self.paths)} image files"

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


__all__ = ["DEFAULT_SYNTHETIC_COUNT", "ImageSet", "SYNTHETIC_PHOTO_SIZE", "synthetic_photos"]
