"""The one image lister: what ``capkit caption``, bulk runs, Ray runs, ``capkit bench`` and the export check
caption, from the sources a user names.

A source is an image file, a folder (the images directly inside, not its subfolders; hidden files skipped),
a glob pattern (``*``, ``?``, ``[...]``, ``**``; expanded here, so quoting works on every shell), or a
listing: a text file of paths (``.txt``/``.lst``, one a line), a JSONL file (``.jsonl``, field ``image`` or
``path``) or a CSV file (``.csv``, column ``image`` or ``path``). Each image becomes an :class:`ImageInput`;
a source that names nothing (a missing file, an empty folder, a glob with no match, a bad listing line)
becomes one with ``error`` set, so that the caller reports it in its place and goes on. Anything a folder or
glob names that is not a folder is listed as it is (a FIFO, a broken link, a link loop ...): reading it
says what is wrong, as an error line, without blocking.

Listing is lazy: ``order="stream"`` (bulk runs) never holds the list (folders in the file system's order,
globs as found); ``order="sorted"`` (``capkit caption``) sorts each folder's and each glob's matches.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from capkit.runtime.errors import one_line, printable

GLOB_CHARS = frozenset("*?[")
TEXT_LISTINGS = (".txt", ".lst")
JSONL_LISTINGS = (".jsonl",)
CSV_LISTINGS = (".csv",)
LISTING_FIELDS = ("image", "path")  # the field (JSONL) or column (CSV) that names the image, first found
MAX_LINE = 64 * 1024  # longest line of a listing; a longer one is reported, not read into memory
ORDERS = ("stream", "sorted")
BOM = "\ufeff"  # a UTF-8 byte-order mark some editors put before a text file's first line


@dataclass(frozen=True)
class ImageInput:
    """One image named by a source: a path, or the reason there is none."""

    label: str  # what output calls it: the path, or the source (or listing line) that named nothing
    path: Optional[str] = None
    error: Optional[str] = None


def image_extensions() -> frozenset[str]:
    """File extensions Pillow can open (.jpg, .png, .webp, ...), lower case."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_listing(path: str) -> bool:
    return Path(path).suffix.lower() in TEXT_LISTINGS + JSONL_LISTINGS + CSV_LISTINGS


def _failed(label: str, problem: str) -> ImageInput:
    return ImageInput(label, error=f"{printable(label)}: {problem}")


# -- folders and globs --------------------------------------------------------------------------------------------
def _folder(folder: str, order: str) -> Iterator[str]:
    """The image files directly inside ``folder``: every entry with an image extension that is not a folder
    (special files and broken links included: reading them reports them)."""
    extensions = image_extensions()
    with os.scandir(folder) as entries:
        names = (entry.name for entry in entries if not entry.name.startswith(".")
                 and os.path.splitext(entry.name)[1].lower() in extensions and not _is_dir(entry))
        for name in sorted(names) if order == "sorted" else names:
            yield os.path.join(folder, name)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # cannot tell: list it, and reading it says why
        return False


def _from_folder(folder: str, order: str) -> Iterator[ImageInput]:
    found = False
    try:
        for path in _folder(folder, order):
            found = True
            yield ImageInput(path, path)
    except OSError as e:
        yield _failed(folder, f"cannot read: {e.strerror or e}")
        return
    if not found:
        yield _failed(folder, "no images in this folder")


def _from_glob(pattern: str, order: str) -> Iterator[ImageInput]:
    found = False
    matches = glob.iglob(pattern, recursive=True)
    for match in sorted(matches) if order == "sorted" else matches:
        if os.path.isdir(match):
            try:
                for path in _folder(match, order):
                    found = True
                    yield ImageInput(path, path)
            except OSError:  # a matched folder that cannot be listed holds no image we can read
                continue
        else:
            found = True
            yield ImageInput(match, match)
    if not found:
        yield _failed(pattern, "no file matches")


# -- listings -----------------------------------------------------------------------------------------------------
def _lines(path: str) -> Iterator[tuple[int, Optional[str]]]:
    """(line number, text without its newline) of each non-blank line, read lazily; None for a line over MAX_LINE."""
    with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        number = 0
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE and not line.endswith("\n"):
                while line and not line.endswith("\n"):  # skip the rest of the line, a piece at a time
                    line = f.readline(MAX_LINE + 1)
                yield number, None
                continue
            line = line.rstrip("\r\n")
            if number == 1:
                line = line.removeprefix(BOM)
            if line.strip():
                yield number, line


def _line_error(listing: str, number: int, problem: str) -> ImageInput:
    return ImageInput(f"{listing}:{number}", error=f"{printable(listing)} line {number}: {problem}")


def _from_json_line(listing: str, number: int, line: str) -> ImageInput:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        return _line_error(listing, number, f"not JSON ({one_line(e, 80)})")
    if isinstance(data, dict):
        for name in LISTING_FIELDS:
            if isinstance(data.get(name), str) and data[name]:
                return ImageInput(data[name], data[name])
    return _line_error(listing, number, f"no {' or '.join(map(repr, LISTING_FIELDS))} field with a path")


def _from_csv(listing: str) -> Iterator[ImageInput]:
    with open(listing, "r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            column = next((header.index(name) for name in LISTING_FIELDS if header and name in header), None)
            if column is None:
                yield _failed(listing, f"no {' or '.join(map(repr, LISTING_FIELDS))} column in its header")
                return
            for row in reader:
                if column < len(row) and row[column].strip():
                    yield ImageInput(row[column], row[column])
                elif any(cell.strip() for cell in row):
                    yield _line_error(listing, reader.line_num, f"no value in column {header[column]!r}")
        except csv.Error as e:  # a field over csv's size limit, a NUL ...: the rest of this listing is unreadable
            yield _line_error(listing, reader.line_num, f"unreadable CSV ({one_line(e, 80)})")


def _from_listing(listing: str) -> Iterator[ImageInput]:
    suffix = Path(listing).suffix.lower()
    try:
        if suffix in CSV_LISTINGS:
            yield from _from_csv(listing)
            return
        for number, line in _lines(listing):
            if line is None:
                yield _line_error(listing, number, f"longer than {MAX_LINE:,} characters")
            elif suffix in TEXT_LISTINGS:
                yield ImageInput(line, line)
            else:
                yield _from_json_line(listing, number, line)
    except (OSError, UnicodeError) as e:
        yield _failed(listing, f"cannot read: {getattr(e, 'strerror', None) or e}")


# -- the lister ---------------------------------------------------------------------------------------------------
def iter_inputs(sources: Iterable[Union[str, os.PathLike]], order: str = "stream") -> Iterator[ImageInput]:
    """Each image named by ``sources``, lazily, in the sources' order (see the module's doc); a source that
    names nothing gives one ImageInput with ``error`` set. ``order``: "stream" or "sorted" (within a folder
    or a glob's matches)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    for source in map(os.fsdecode, sources):
        if os.path.isdir(source):
            yield from _from_folder(source, order)
        elif os.path.isfile(source) and is_listing(source):
            yield from _from_listing(source)
        elif os.path.lexists(source):
            # whatever it is (a FIFO, a symlink loop, ...), reading it says what is wrong, without blocking
            yield ImageInput(source, source)
        elif GLOB_CHARS & set(source):
            yield from _from_glob(source, order)
        else:
            yield _failed(source, "no such file")


def expand_inputs(sources: Iterable[Union[str, os.PathLike]]) -> list[ImageInput]:
    """Every image named by ``sources``, each folder's and glob's sorted: what ``capkit caption`` captions."""
    return list(iter_inputs(sources, order="sorted"))


__all__ = ["GLOB_CHARS", "ImageInput", "LISTING_FIELDS", "MAX_LINE", "expand_inputs", "image_extensions", "is_listing",
           "iter_inputs"]
