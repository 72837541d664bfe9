"""Image files named by a user: files, folders (the images directly inside) and glob patterns.

The one place that lists images for ``capkit caption``, ``capkit bench`` and the export check.
Each argument becomes one or more :class:`ImageInput`; an argument that names nothing readable
becomes one with ``error`` set, so a caller reports it in its place instead of stopping.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

GLOB_CHARS = frozenset("*?[")
UNPRINTABLE = frozenset(("Cc", "Cs", "Zl", "Zp"))  # control characters, lone surrogates (undecodable bytes), line breaks


def printable(name: str) -> str:
    """``name`` with control characters, line and paragraph separators and undecodable bytes escaped
    (``\\n``, ``\\t``, ``\\x1b``, ``\\udcff``), so that a file name cannot split a line of output
    or fail to print; every other character, backslashes included, is kept as it is."""
    if name.isprintable():
        return name
    return "".join(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(ch) in UNPRINTABLE else ch for ch in name)


@dataclass(frozen=True)
class ImageInput:
    """One image named by an argument: a path, or the reason there is none."""

    label: str  # what output calls it: the argument, or the path found in a folder or by a pattern
    path: Optional[str] = None
    error: Optional[str] = None


def image_extensions() -> frozenset[str]:
    """File extensions Pillow can open (.jpg, .png, .webp, ...), lower case."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def folder_images(folder: str | os.PathLike) -> list[str]:
    """The image files directly inside ``folder`` (not its subfolders), sorted by name; hidden files skipped."""
    extensions = image_extensions()
    names = sorted(entry.name for entry in os.scandir(folder)
                   if entry.is_file() and not entry.name.startswith(".") and Path(entry.name).suffix.lower() in extensions)
    return [os.path.join(folder, name) for name in names]


def _listable(folder: str) -> list[str]:
    try:
        return folder_images(folder)
    except OSError:  # a matched folder that cannot be listed holds no image we can read
        return []


def expand_inputs(arguments: Sequence[str | os.PathLike]) -> list[ImageInput]:
    """Files as given; folders: the images inside, sorted (not recursive); glob patterns (``*``, ``?``,
    ``[...]``, ``**``) expanded here, sorted, so that they work where the shell does not expand them."""
    inputs: list[ImageInput] = []
    for argument in map(os.fspath, arguments):
        if os.path.isdir(argument):
            try:
                found = folder_images(argument)
            except OSError as e:  # a folder that cannot be listed (no permission, ...)
                inputs.append(ImageInput(argument, error=f"{printable(argument)}: cannot read: {e.strerror or e}"))
                continue
            inputs += [ImageInput(p, p) for p in found] or [
                ImageInput(argument, error=f"{printable(argument)}: no images in this folder")]
        elif os.path.lexists(argument):
            # whatever it is (a FIFO, a symlink loop, ...), reading it says what is wrong, without blocking
            inputs.append(ImageInput(argument, argument))
        elif GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            files = [m for m in matches if os.path.isfile(m)] + [p for m in matches if os.path.isdir(m)
                                                                  for p in _listable(m)]
            inputs += [ImageInput(p, p) for p in files] or [
                ImageInput(argument, error=f"{printable(argument)}: no file matches")]
        else:
            inputs.append(ImageInput(argument, error=f"{printable(argument)}: no such file"))
    return inputs


__all__ = ["ImageInput", "expand_inputs", "folder_images", "image_extensions", "printable"]
