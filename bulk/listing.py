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
from typing import Iterable, Iterator, Optional, TextIO, Union

from capkit.runtime.errors import CapkitError, one_line, printable

GLOB_CHARS = frozenset("*?[")
TEXT_LISTINGS = (".txt", ".lst")
JSONL_LISTINGS = (".jsonl",)
CSV_LISTINGS = (".csv",)
LISTING_FIELDS = ("image", "path")  # the field (JSONL) or column (CSV) that names the image, first found
MAX_LINE = 64 * 1024  # longest line of a listing; a longer one is reported, not read into memory
ORDERS = ("stream", "sorted")
BOM = "\ufeff"  # a UTF-8 byte-order mark some editors put before a text file's first line
PathLike = Union[str, bytes, os.PathLike]
PATH_TYPES = (str, bytes, os.PathLike)


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
    matches = _iglob(pattern)
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


def _iglob(pattern: str) -> Iterator[str]:
    """``glob.iglob(pattern, recursive=True)``, except that ``**`` never enters a link to a folder: glob's
    does, so two links to a parent folder make its walk 2^depth long (and a link loop runs until the path is
    too long). A ``**`` is a walk of the real folders below, each given to the rest of the pattern."""
    parts = (pattern.replace(os.altsep, os.sep) if os.altsep else pattern).split(os.sep)
    if "**" not in parts:
        yield from glob.iglob(pattern)
        return
    at = parts.index("**")
    head, rest = os.sep.join(parts[:at]), parts[at + 1:]
    if not head and pattern.startswith(os.sep):
        head = os.sep
    tops = (glob.iglob(head) if glob.has_magic(head) else [head]) if head else [""]
    for top in tops:
        for folder in _real_folders(top):
            if any(rest):
                yield from _iglob(os.path.join(glob.escape(folder), *rest))
            else:  # "d/**": every folder below (their images are listed)
                yield folder or os.curdir


def _real_folders(top: str) -> Iterator[str]:
    """``top`` ("" for the current folder) and every folder below it that is not hidden, walked without
    following links to folders and without recursion (a deep tree cannot exhaust Python's stack)."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder or os.curdir) as entries:
                below = [os.path.join(folder, e.name) for e in entries
                         if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        except OSError:  # not a folder, or unreadable: glob skips it too
            continue
        yield folder
        stack.extend(reversed(below))


# -- listings -----------------------------------------------------------------------------------------------------
def _skip_rest(f: TextIO, line: str) -> None:
    """Reads past the rest of a line whose start was ``line``, a piece at a time (never the whole line)."""
    while line and not line.endswith(("\n", "\r")):
        line = f.readline(MAX_LINE + 1)


def _lines(path: str) -> Iterator[tuple[int, Optional[str]]]:
    """(line number, text without its newline) of each non-blank line, read lazily; None for a line over MAX_LINE."""
    with open(path, "r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        number = 0
        while True:
            line = f.readline(MAX_LINE + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE and not line.endswith(("\n", "\r")):
                _skip_rest(f, line)
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


class _RowTooLong(Exception):
    pass


class _CsvLines:
    """The lines csv.reader parses, each read in a piece of at most MAX_LINE characters: a row over MAX_LINE
    (one long line, or a quoted field running over many lines) raises _RowTooLong, and csv.reader goes on
    with the next line. (csv's own field_size_limit would let a row of many fields grow without bound.)"""

    def __init__(self, f: TextIO):
        self.f, self.number, self.row_chars = f, 0, 0

    def __iter__(self) -> "_CsvLines":
        return self

    def __next__(self) -> str:
        line = self.f.readline(MAX_LINE + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self.row_chars += len(line.rstrip("\r\n"))
        if self.row_chars > MAX_LINE:
            _skip_rest(self.f, line)
            raise _RowTooLong
        return line


def _csv_rows(f: TextIO) -> Iterator[tuple[int, Union[list[str], str]]]:
    """(line number, cells) of each CSV row, or (line number, the problem) of one that cannot be read; the
    rows after a bad one are still read."""
    lines = _CsvLines(f)
    reader = csv.reader(lines)
    while True:
        lines.row_chars = 0
        try:
            row: Union[list[str], str] = next(reader)
        except StopIteration:
            return
        except _RowTooLong:
            row = f"a row longer than {MAX_LINE:,} characters"
        except csv.Error as e:  # a NUL (before Python 3.11), an unquoted quote in strict mode ...
            row = f"unreadable CSV ({one_line(e, 80)})"
        yield lines.number, row


def _from_csv(listing: str) -> Iterator[ImageInput]:
    with open(listing, "r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        rows = _csv_rows(f)
        _, header = next(rows, (0, []))
        column = next((header.index(name) for name in LISTING_FIELDS if isinstance(header, list) and name in header),
                      None)
        if column is None:
            yield _failed(listing, f"no {' or '.join(map(repr, LISTING_FIELDS))} column in its header")
            return
        for number, row in rows:
            if isinstance(row, str):
                yield _line_error(listing, number, row)
            elif column < len(row) and row[column].strip():
                yield ImageInput(row[column], row[column])
            elif any(cell.strip() for cell in row):
                yield _line_error(listing, number, f"no value in column {header[column]!r}")


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
def source_list(sources: Union[Iterable[PathLike], PathLike]) -> list:
    """``sources`` as a list; one path (str, bytes or os.PathLike) is one source, not a string of them."""
    if isinstance(sources, PATH_TYPES):
        return [sources]
    try:
        return list(sources)
    except TypeError:
        raise CapkitError(f"sources must be paths (a list of str, bytes or os.PathLike), got "
                          f"{type(sources).__name__}") from None


def _source_name(source: object) -> Union[str, ImageInput]:
    """A source as a str, or the error input of one that is not a path or is too long to be one."""
    try:
        if isinstance(source, PATH_TYPES):
            name = os.fsdecode(source)
            if len(name) <= MAX_LINE:
                return name
            return _failed(f"{name[:80]}...", f"a name of {len(name):,} characters (at most {MAX_LINE:,})")
    except TypeError:  # a PathLike whose __fspath__ gives neither str nor bytes
        pass
    return _failed(f"<{type(source).__name__}>", "not a path (str, bytes or os.PathLike)")


def iter_inputs(sources: Union[Iterable[PathLike], PathLike], order: str = "stream") -> Iterator[ImageInput]:
    """Each image named by ``sources``, lazily, in the sources' order (see the module's doc); a source that
    names nothing gives one ImageInput with ``error`` set. ``order``: "stream" or "sorted" (within a folder
    or a glob's matches)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    for source in [sources] if isinstance(sources, PATH_TYPES) else sources:
        source = _source_name(source)
        if isinstance(source, ImageInput):
            yield source
        elif os.path.isdir(source):
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


def expand_inputs(sources: Union[Iterable[PathLike], PathLike]) -> list[ImageInput]:
    """Every image named by ``sources``, each folder's and glob's sorted: what ``capkit caption`` captions."""
    return list(iter_inputs(sources, order="sorted"))


__all__ = ["GLOB_CHARS", "ImageInput", "LISTING_FIELDS", "MAX_LINE", "expand_inputs", "image_extensions", "is_listing",
           "iter_inputs", "source_list"]
