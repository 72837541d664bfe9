"""Bulk captioning: a whole collection into one JSONL file, streamed, resumable, with reading overlapped.

    from capkit.runtime import Captioner
    from capkit.runtime.bulk import run_bulk
    summary = run_bulk(Captioner("bundle"), ["photos/", "more.txt"], "captions.jsonl", readers=2)

Sources are folders (the images directly inside, in the order the file system lists them), glob
patterns, image files, and listings: a text file of paths (``.txt``/``.lst``, one a line), a JSONL
file (``.jsonl``, field ``image`` or ``path``) or a CSV file (``.csv``, column ``image`` or ``path``).
Listings are read lazily: nothing holds the list of images.

Guarantees:

* One JSON line per image, the fields of ``capkit caption --json`` (image, caption, tokens, logprob;
  or image, error), plus ``sha256`` with ``skip_by="hash"``. Lines are in the listing's order.
* Lines are written in groups (``group`` lines or every ``interval`` seconds), each group with one
  ``write``, and fsync'ed at least every second: a killed process loses at most the group being
  gathered, a crash of the machine the last second or so. A torn last line (a crash mid-write, a
  full disk) is dropped when the run is resumed.
* Resume: a run whose ``out`` exists skips the images it already holds (by path, and with
  ``skip_by="hash"`` by content sha256 too), then appends the others in the listing's order; an
  interrupted run, resumed, holds each image exactly once with the captions of an uninterrupted run
  (a caption is a function of the image and the seed alone). An image listed twice is captioned once.
  Error lines count as done: to retry the failed images, drop their lines (``grep -v '"error"'``).
* Memory does not depend on the number of images, except for 8 bytes an image: the images already
  done are kept as 64-bit digests of their paths (a sorted numpy array), so that each is written once.
* ``readers`` threads read and preprocess images (Pillow releases the GIL while decoding) while the
  model captions the previous batch; ``readers=0`` reads in the captioning thread (no overlap).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import glob
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from capkit.runtime.captioner import DEFAULT_BATCH_SIZE, Caption, Captioner, failed_caption, check_batch_size
from capkit.runtime.decoding import DecodingOptions
from capkit.runtime.errors import CapkitError
from capkit.runtime.image_files import open_regular_file
from capkit.runtime.inputs import GLOB_CHARS, ImageInput, image_extensions, printable

TEXT_LISTINGS = (".txt", ".lst")
JSONL_LISTINGS = (".jsonl",)
CSV_LISTINGS = (".csv",)
LISTING_FIELDS = ("image", "path")  # the field (JSONL) or column (CSV) that names the image, first found
MAX_LINE = 64 * 1024  # longest line of a listing; a longer one is reported, not read into memory
SKIP_BY = ("path", "hash")
HASH_CHUNK = 1 << 20


class BulkError(CapkitError):
    """A bulk run that cannot start or go on (an output file that cannot be read or written ...)."""


# -- listing ------------------------------------------------------------------------------------------------------
def is_listing(path: str) -> bool:
    return Path(path).suffix.lower() in TEXT_LISTINGS + JSONL_LISTINGS + CSV_LISTINGS


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
            if line.strip():
                yield number, line


def _listing_error(listing: str, number: int, problem: str) -> ImageInput:
    where = f"{listing}:{number}"
    return ImageInput(where, error=f"{printable(listing)} line {number}: {problem}")


def _from_listing(listing: str) -> Iterator[ImageInput]:
    suffix = Path(listing).suffix.lower()
    try:
        if suffix in CSV_LISTINGS:
            yield from _from_csv(listing)
            return
        for number, line in _lines(listing):
            if line is None:
                yield _listing_error(listing, number, f"longer than {MAX_LINE:,} characters")
            elif suffix in TEXT_LISTINGS:
                yield ImageInput(line, line)
            else:
                yield _from_json_line(listing, number, line)
    except (OSError, UnicodeError) as e:
        yield ImageInput(listing, error=f"{printable(listing)}: cannot read: {getattr(e, 'strerror', None) or e}")


def _from_json_line(listing: str, number: int, line: str) -> ImageInput:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        return _listing_error(listing, number, f"not JSON ({' '.join(str(e).split())[:80]})")
    if isinstance(data, dict):
        for name in LISTING_FIELDS:
            if isinstance(data.get(name), str) and data[name]:
                return ImageInput(data[name], data[name])
    return _listing_error(listing, number, f"no {' or '.join(map(repr, LISTING_FIELDS))} field with a path")


def _from_csv(listing: str) -> Iterator[ImageInput]:
    with open(listing, "r", encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            column = next((header.index(name) for name in LISTING_FIELDS if header and name in header), None)
            if column is None:
                yield ImageInput(listing, error=f"{printable(listing)}: no {' or '.join(map(repr, LISTING_FIELDS))} "
                                                f"column in its header")
                return
            for row in reader:
                if column < len(row) and row[column].strip():
                    yield ImageInput(row[column], row[column])
                elif any(cell.strip() for cell in row):
                    yield _listing_error(listing, reader.line_num, f"no value in column {header[column]!r}")
        except csv.Error as e:  # a field over csv's size limit, a NUL ...: the rest of this listing is unreadable
            yield _listing_error(listing, reader.line_num, f"unreadable CSV ({' '.join(str(e).split())[:80]})")


def _folder(folder: str) -> Iterator[str]:
    """The image files directly inside ``folder``, in the file system's order (streamed, never sorted)."""
    extensions = image_extensions()
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if (not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in extensions
                        and entry.is_file()):
                    yield os.path.join(folder, entry.name)
            except OSError:
                continue


def iter_inputs(sources: Iterable[Union[str, os.PathLike]]) -> Iterator[ImageInput]:
    """Each image named by ``sources``, lazily: folders, glob patterns, image files and listings
    (see the module's doc); a source that names nothing gives one ImageInput with ``error`` set."""
    for argument in map(os.fsdecode, sources):
        if os.path.isdir(argument):
            found = False
            try:
                for path in _folder(argument):
                    found = True
                    yield ImageInput(path, path)
            except OSError as e:
                yield ImageInput(argument, error=f"{printable(argument)}: cannot read: {e.strerror or e}")
                continue
            if not found:
                yield ImageInput(argument, error=f"{printable(argument)}: no images in this folder")
        elif os.path.isfile(argument) and is_listing(argument):
            yield from _from_listing(argument)
        elif os.path.lexists(argument):
            yield ImageInput(argument, argument)
        elif GLOB_CHARS & set(argument):
            found = False
            for match in glob.iglob(argument, recursive=True):
                if os.path.isdir(match):
                    try:
                        for path in _folder(match):
                            found = True
                            yield ImageInput(path, path)
                    except OSError:
                        continue
                elif os.path.isfile(match):
                    found = True
                    yield ImageInput(match, match)
            if not found:
                yield ImageInput(argument, error=f"{printable(argument)}: no file matches")
        else:
            yield ImageInput(argument, error=f"{printable(argument)}: no such file")


# -- what is done -------------------------------------------------------------------------------------------------
def digest64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


class KeySet:
    """A set of strings kept as 64-bit digests: a sorted uint64 array (8 bytes a key) and a small set of
    recent ones merged into it now and then. Two different keys collide with odds of about n^2 / 2^65
    (1 in 30 million for a million images)."""

    MERGE = 1 << 16

    def __init__(self) -> None:
        self._sorted = np.empty(0, np.uint64)
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __contains__(self, key: str) -> bool:
        digest = digest64(key)
        if digest in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(digest)))
        return i < len(self._sorted) and int(self._sorted[i]) == digest

    def add(self, key: str) -> None:
        self._recent.add(digest64(key))
        if len(self._recent) >= self.MERGE:
            self._sorted = np.union1d(self._sorted, np.fromiter(self._recent, np.uint64, len(self._recent)))
            self._recent.clear()


def drop_torn_line(path: Union[str, os.PathLike]) -> int:
    """Truncates ``path`` after its last newline (a line a crash cut short); returns the bytes dropped."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        return size - end


@dataclass
class Done:
    """What an output file already holds: the images (paths and, where recorded, content hashes)."""

    paths: KeySet
    hashes: KeySet
    lines: int = 0
    unreadable: int = 0  # complete lines that are not a JSON object with an image: ignored (redone)
    torn_bytes: int = 0


def read_done(path: Union[str, os.PathLike]) -> Done:
    """The images an output file holds, its torn last line dropped first (the file is truncated)."""
    done = Done(KeySet(), KeySet())
    if not os.path.exists(path):
        return done
    done.torn_bytes = drop_torn_line(path)
    with open(path, "rb") as f:
        for raw in f:
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                done.unreadable += 1
                continue
            if not isinstance(data, dict) or not isinstance(data.get("image"), str):
                done.unreadable += 1
                continue
            done.lines += 1
            done.paths.add(data["image"])
            if isinstance(data.get("sha256"), str):
                done.hashes.add(data["sha256"])
    return done


# -- writing ------------------------------------------------------------------------------------------------------
class LineWriter:
    """Appends JSON lines to a file in groups: each group one ``os.write`` (retried on a short write), every
    ``group`` lines or ``interval`` seconds, so that a killed process loses at most one group (what was
    written is in the kernel's hands); and an ``fsync`` at most every ``sync_interval`` seconds (and on
    close), so that a crash of the machine loses at most that much."""

    def __init__(self, path: Union[str, os.PathLike], group: int = 64, interval: float = 2.0,
                 sync_interval: float = 1.0):
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as e:
            raise BulkError(f"{printable(os.fsdecode(path))}: cannot write: {e.strerror or e}") from None
        self.path = path
        self.group, self.interval, self.sync_interval = group, interval, sync_interval
        self._buffer: list[bytes] = []
        self._last = self._synced = time.monotonic()
        self._dirty = False

    def write(self, data: dict[str, Any]) -> None:
        self._buffer.append(json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n")
        if len(self._buffer) >= self.group or time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self, sync: bool = False) -> None:
        try:
            if self._buffer:
                view = memoryview(b"".join(self._buffer))
                self._buffer.clear()
                while view:
                    view = view[os.write(self._fd, view):]
                self._dirty = True
            now = self._last = time.monotonic()
            if self._dirty and (sync or now - self._synced >= self.sync_interval):
                os.fsync(self._fd)
                self._dirty, self._synced = False, time.monotonic()
        except OSError as e:
            raise BulkError(f"{printable(os.fsdecode(self.path))}: cannot write: {e.strerror or e}") from None

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush(sync=True)
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "LineWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass
class BulkSummary:
    out: str
    captioned: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output file
    repeated: int = 0  # listed again in this run (same path, or same content with skip_by="hash")
    torn_bytes: int = 0
    unreadable_lines: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return (self.captioned + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One line for stderr."""
        done = f"captioned {self.captioned:,} images, {self.failed:,} failed"
        skipped = f", skipped {self.skipped:,} already in {printable(self.out)}" if self.skipped else ""
        repeated = f", {self.repeated:,} listed twice" if self.repeated else ""
        rate = f" in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        failed = f"; the failed images have an \"error\" in {printable(self.out)}" if self.failed else ""
        return done + skipped + repeated + rate + failed


def unseen_inputs(sources: Iterable[str], done: Optional["KeySet"], summary: Any) -> Iterator[ImageInput]:
    """The inputs listed by ``sources``, lazily, less those already in ``done`` (counted in
    ``summary.skipped``) and those listed earlier in this run (``summary.repeated``): each image once."""
    seen = KeySet()
    for item in iter_inputs(sources):
        key = item.path if item.error is None else item.argument
        if done is not None and key in done:
            summary.skipped += 1
        elif key in seen:
            summary.repeated += 1
        else:
            seen.add(key)
            yield item


@dataclass
class _Read:
    """A reader's result for one listed image: its row, or its error Caption, or skipped (content seen)."""

    item: ImageInput
    row: Optional[np.ndarray] = None
    error: Optional[Caption] = None
    sha256: Optional[str] = None
    skipped: bool = False


def file_sha256(path: str) -> str:
    with open_regular_file(path, printable(path)) as f:  # a regular file only: a FIFO is refused, not waited on
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _counter(sources: list[str], stop: threading.Event, found: list[int]) -> None:
    """Counts the listing in the background (for the progress bar's ETA); found[0] once done."""
    try:
        n = 0
        for _ in iter_inputs(sources):
            n += 1
            if stop.is_set():
                return
        found.append(n)
    except Exception:  # a count is a nicety: the run itself reports every problem
        pass


def progress_bar(enabled: Optional[bool]):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(unit="img", file=sys.stderr, disable=(not enabled) if enabled is not None else None,
                dynamic_ncols=True, smoothing=0.1)


def run_bulk(captioner: Captioner, sources: Iterable[Union[str, os.PathLike]], out: Union[str, os.PathLike], *,
             readers: int = 2, batch_size: int = DEFAULT_BATCH_SIZE, skip_by: str = "path",
             options: Optional[DecodingOptions] = None, group: int = 64, interval: float = 2.0,
             progress: Optional[bool] = None, status: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
             count: bool = True) -> BulkSummary:
    """Captions every image of ``sources`` into ``out`` (JSON lines), resuming where a previous run stopped.

    ``readers``: threads that read and preprocess (0: in this thread, no overlap). ``skip_by``: "path"
    (images whose path ``out`` holds are skipped) or "hash" (also those whose content sha256 it holds;
    each line then records ``sha256``). ``options``: from ``captioner.options(...)``. ``progress``: a
    tqdm bar on stderr (None: when stderr is a terminal). ``status``: where the resume message goes.
    Returns a :class:`BulkSummary`; on KeyboardInterrupt the lines done are flushed, and the summary
    says ``interrupted``."""
    if skip_by not in SKIP_BY:
        raise BulkError(f"skip_by must be one of {', '.join(SKIP_BY)}, got {skip_by!r}")
    if isinstance(readers, bool) or not isinstance(readers, int) or readers < 0 or readers > 64:
        raise BulkError(f"readers must be an integer from 0 to 64, got {readers!r}")
    batch_size = check_batch_size(batch_size, captioner.limits)
    options = captioner.options() if options is None else options
    sources = [os.fsdecode(s) for s in sources]
    out = os.fsdecode(out)
    if os.path.isdir(out):
        raise BulkError(f"{printable(out)}: is a folder; --out takes a file (captions.jsonl)")
    try:
        done = read_done(out)
    except OSError as e:
        raise BulkError(f"{printable(out)}: cannot read: {e.strerror or e}") from None
    summary = BulkSummary(out=out, torn_bytes=done.torn_bytes, unreadable_lines=done.unreadable)
    if done.torn_bytes:
        status(f"{printable(out)}: dropped a torn last line ({done.torn_bytes} bytes) left by an interrupted run")
    if done.lines:
        status(f"Resuming: {printable(out)} holds {done.lines:,} images; they are skipped")
    if done.unreadable:
        status(f"Warning: {printable(out)}: {done.unreadable} lines are not captions; their images are captioned again")
    hashing = skip_by == "hash"
    seen_hashes = KeySet()  # this run's
    preprocess_row = captioner.preprocess  # the captioner's spec, limits and decoding choice

    def read(item: ImageInput) -> _Read:
        if item.error is not None:
            return _Read(item, error=Caption(text="", tokens=(), logprob=None, image=item.argument, error=item.error,
                                             finished=False))
        label = item.path
        sha = None
        try:
            if hashing:
                sha = file_sha256(label)
                if sha in done.hashes:  # read-only here: safe from reader threads
                    return _Read(item, sha256=sha, skipped=True)
            return _Read(item, row=preprocess_row(label), sha256=sha)
        except Exception as e:  # this image only, whatever it is
            return _Read(item, error=failed_caption(label, e), sha256=sha)

    def listed() -> Iterator[ImageInput]:
        return unseen_inputs(sources, done.paths, summary)

    stop = threading.Event()
    counted: list[int] = []
    if count:
        threading.Thread(target=_counter, args=(sources, stop, counted), daemon=True, name="capkit-count").start()
    bar = progress_bar(progress)
    writer = LineWriter(out, group, interval)
    pool = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="capkit-reader") if readers else None
    start = time.perf_counter()
    entries: list[_Read] = []  # the batch being gathered, in listing order
    rows = 0

    def emit() -> None:
        nonlocal rows
        batch = [e for e in entries if e.row is not None]
        captions = iter(captioner.caption_pixels(np.stack([e.row for e in batch]), [e.item.path for e in batch],
                                                 options) if batch else ())
        for entry in entries:
            result = entry.error if entry.row is None else next(captions)
            data = result.to_dict()
            if entry.sha256 is not None:
                data["sha256"] = entry.sha256
            writer.write(data)
            if result.ok:
                summary.captioned += 1
            else:
                summary.failed += 1
        if bar is not None:
            bar.update(len(entries))
            if counted:
                bar.total = max(counted[0] - summary.skipped - summary.repeated, bar.n)
            bar.set_postfix(failed=summary.failed, skipped=summary.skipped, refresh=False)
        entries.clear()
        rows = 0

    def take(result: _Read) -> None:
        nonlocal rows
        if result.sha256 is not None:
            if result.skipped:
                summary.skipped += 1
                return
            if result.sha256 in seen_hashes:
                summary.repeated += 1
                return
            seen_hashes.add(result.sha256)
        entries.append(result)
        rows += result.row is not None
        if rows >= batch_size or len(entries) >= 4 * batch_size:
            emit()

    try:
        if pool is None:
            for item in listed():
                take(read(item))
        else:
            ahead = max(2 * batch_size, 4 * readers)  # images read ahead of the model: bounds memory
            pending: collections.deque = collections.deque()
            for item in listed():
                pending.append(pool.submit(read, item))
                if len(pending) >= ahead:
                    take(pending.popleft().result())
            while pending:
                take(pending.popleft().result())
        if entries:
            emit()
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        stop.set()
        summary.seconds = time.perf_counter() - start
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        writer.close()  # the lines done so far, complete
    return summary


__all__ = ["BulkError", "BulkSummary", "Done", "KeySet", "LineWriter", "drop_torn_line", "file_sha256",
           "is_listing", "iter_inputs", "read_done", "run_bulk"]
