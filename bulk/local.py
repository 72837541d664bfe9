"""The bulk run on one machine: reader threads read and preprocess images while the model captions the
previous batch; lines go to the output file in the listing's order (see :mod:`capkit.bulk` for the
guarantees)."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Union

import numpy as np

from capkit.bulk.listing import ImageInput, iter_inputs, source_list
from capkit.bulk.output import BulkError, BulkSummary, Done, ImageKeys, KeySet, LineWriter, open_output, output_path
from capkit.runtime.captioner import DEFAULT_BATCH_SIZE, Caption, Captioner, check_batch_size, failed_caption
from capkit.runtime.decoding import DecodingOptions
from capkit.runtime.errors import Status, check_int, printable
from capkit.runtime.image_files import open_regular_file

SKIP_BY = ("path", "hash")
HASH_CHUNK = 1 << 20
MAX_READERS = 64


def stderr_status(message: str) -> None:
    print(message, file=sys.stderr)


def listed_once(sources: Iterable[str], summary: BulkSummary, keys: ImageKeys) -> Iterator[tuple[ImageInput, str]]:
    """Each input listed by ``sources``, lazily, with its key (:class:`ImageKeys`), less those listed earlier
    in this run (counted in ``summary.repeated``): each image once, however it is named."""
    seen = KeySet()
    for item in iter_inputs(sources):
        key = keys(item.label)  # the path, or the source that named nothing
        if key in seen:
            summary.repeated += 1
        else:
            seen.add(key)
            yield item, key


def unseen_inputs(sources: Iterable[str], done: Optional[KeySet], summary: BulkSummary,
                  keys: Optional[ImageKeys] = None) -> Iterator[ImageInput]:
    """:func:`listed_once`'s inputs less those already in ``done`` (counted in ``summary.skipped``)."""
    for item, key in listed_once(sources, summary, keys or ImageKeys()):
        if done is not None and key in done:
            summary.skipped += 1
        else:
            yield item


def error_caption(item: ImageInput) -> Caption:
    """The error line of a source that named nothing."""
    return Caption(text="", tokens=(), logprob=None, image=item.label, error=item.error, finished=False)


def file_sha256(path: str) -> str:
    with open_regular_file(path, printable(path)) as f:  # a regular file only: a FIFO is refused, not waited on
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def progress_bar(enabled: Optional[bool]):
    """A tqdm bar on stderr (None: when stderr is a terminal)."""
    from tqdm import tqdm

    return tqdm(unit="img", file=sys.stderr, disable=(not enabled) if enabled is not None else None,
                dynamic_ncols=True, smoothing=0.1)


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


@dataclass
class _Read:
    """A reader's result for one listed image: its row, or its error Caption, or skipped (content seen); or,
    for an image already in the output, a stand-in that keeps its place in the batch (see _Run)."""

    item: ImageInput
    row: Optional[np.ndarray] = None  # (3, crop, crop) float32
    error: Optional[Caption] = None
    sha256: Optional[str] = None
    skipped: bool = False
    done: bool = False  # already in the output: not written again
    was_row: bool = False  # done, and captioned then (not an error line): a row of its batch


class _Run:
    """One bulk run's moving parts: reading an item, gathering a batch in listing order, writing its lines.

    A logprob depends a little (in its 8th digit) on the batch the image was decoded in: the arithmetic of
    the kernels differs with a row's place in its batch. So that a resumed run writes the very lines of an
    uninterrupted one, batches are made the same way in both: the images already in the output keep their
    places (as stand-ins), a batch closes at the same images, and a batch that mixes done and new images
    reads and decodes its done ones again, writing only the new ones' lines. A batch of done images alone
    costs nothing."""

    def __init__(self, captioner: Captioner, done: Done, summary: BulkSummary, writer: LineWriter, hashing: bool,
                 batch_size: int, options: DecodingOptions, bar, counted: list[int]):
        self.captioner, self.done, self.summary, self.writer = captioner, done, summary, writer
        self.hashing, self.batch_size, self.options = hashing, batch_size, options
        self.bar, self.counted = bar, counted
        self.seen_hashes = KeySet()  # this run's
        self.entries: list[_Read] = []  # the batch being gathered, in listing order
        self.rows = 0

    def read(self, item: ImageInput) -> _Read:
        """Runs in a reader thread: the image's hash (with skip_by="hash") and its preprocessed row."""
        if item.error is not None:
            return _Read(item, error=error_caption(item))
        sha = None
        try:
            if self.hashing:
                sha = file_sha256(item.path)
                if sha in self.done.hashes:  # read-only here: safe from reader threads
                    return _Read(item, sha256=sha, skipped=True)
            return _Read(item, row=self.captioner.preprocess(item.path), sha256=sha)
        except Exception as e:  # this image only, whatever it is
            return _Read(item, error=failed_caption(item.path, e), sha256=sha)

    def stand_in(self, item: ImageInput, key: str) -> _Read:
        """An image already in the output: its place in the batch, read only if the batch needs decoding."""
        return _Read(item, done=True, was_row=item.error is None and key not in self.done.failed)

    def take(self, result: _Read) -> None:
        """A read image, in listing order: into the batch (captioned once the batch is full)."""
        if result.done:
            self.summary.skipped += 1
        elif result.sha256 is not None:
            if result.skipped:
                self.summary.skipped += 1
                return
            if result.sha256 in self.seen_hashes:
                self.summary.repeated += 1
                return
            self.seen_hashes.add(result.sha256)
        self.entries.append(result)
        self.rows += result.row is not None or result.was_row
        if self.rows >= self.batch_size or len(self.entries) >= 4 * self.batch_size:
            self.emit()

    def emit(self) -> None:
        """Captions the gathered batch and writes one line per new entry, in listing order."""
        entries, self.entries, self.rows = self.entries, [], 0
        new = [e for e in entries if not e.done]
        if not new:
            return
        for entry in entries:
            if entry.was_row:  # read again, to decode the batch as the run that wrote it did
                try:
                    entry.row = self.captioner.preprocess(entry.item.path)
                except Exception:  # changed since: the batch differs, its new lines are still right
                    pass
        batch = [e for e in entries if e.row is not None]
        pixels = np.stack([e.row for e in batch]) if batch else None  # (B, 3, crop, crop)
        captions = self.captioner.caption_pixels(pixels, [e.item.path for e in batch], self.options) if batch else []
        by_entry = {id(e): c for e, c in zip(batch, captions)}
        for entry in new:
            result = by_entry.get(id(entry), entry.error)
            data = result.to_dict()
            if entry.sha256 is not None:
                data["sha256"] = entry.sha256
            written = self.writer.write(data)
            self.summary.count(result.ok and written)
        self._progress(len(new))

    def _progress(self, n: int) -> None:
        if self.bar is None:
            return
        self.bar.update(n)
        if self.counted:
            self.bar.total = max(self.counted[0] - self.summary.skipped - self.summary.repeated, self.bar.n)
        self.bar.set_postfix(failed=self.summary.failed, skipped=self.summary.skipped, refresh=False)

    def consume(self, listed: Iterator[tuple[ImageInput, str]], pool: Optional[concurrent.futures.ThreadPoolExecutor],
                readers: int) -> None:
        """Reads every listed item (ahead, in ``pool``'s threads) and takes the results in listing order."""
        ahead = max(2 * self.batch_size, 4 * readers)  # images read ahead of the model: bounds memory
        pending: collections.deque = collections.deque()  # futures, and stand-ins (nothing to read)
        for item, key in listed:
            if key in self.done.paths:
                pending.append(self.stand_in(item, key))
            else:
                pending.append(pool.submit(self.read, item) if pool is not None else self.read(item))
            while pending and (len(pending) >= ahead or not isinstance(pending[0], concurrent.futures.Future)):
                self.take(_result(pending.popleft()))
        while pending:
            self.take(_result(pending.popleft()))
        if self.entries:
            self.emit()


def _result(read: Union[_Read, concurrent.futures.Future]) -> _Read:
    return read.result() if isinstance(read, concurrent.futures.Future) else read


def run_bulk(captioner: Captioner, sources: Iterable[Union[str, os.PathLike]], out: Union[str, os.PathLike], *,
             readers: int = 2, batch_size: int = DEFAULT_BATCH_SIZE, skip_by: str = "path",
             options: Optional[DecodingOptions] = None, group: int = 64, interval: float = 2.0,
             progress: Optional[bool] = None, status: Status = stderr_status, count: bool = True) -> BulkSummary:
    """Captions every image of ``sources`` into ``out`` (JSON lines), resuming where a previous run stopped.

    ``sources``: paths (str, bytes or os.PathLike) of images, folders, globs and listings; one path alone
    is one source. ``out``: the JSONL file (absent, empty, or an earlier run's). ``readers``: threads that
    read and preprocess (0: in this thread, no overlap). ``skip_by``: "path" (images whose resolved path
    ``out`` holds are skipped) or "hash" (also those whose content sha256 it holds; each line then records
    ``sha256``). ``options``: from ``captioner.options(...)``. ``progress``: a tqdm bar on stderr (None:
    when stderr is a terminal). ``status``: where the resume message goes. Returns a :class:`BulkSummary`;
    bad arguments and an ``out`` that is not capkit's output are a CapkitError (one line), never a
    TypeError; on KeyboardInterrupt the lines done are flushed, and the summary says ``interrupted``."""
    if skip_by not in SKIP_BY:
        raise BulkError(f"skip_by must be one of {', '.join(SKIP_BY)}, got {skip_by!r}")
    readers = check_int(readers, "readers", 0, MAX_READERS, error=BulkError)
    batch_size = check_batch_size(batch_size, captioner.limits)
    options = captioner.options() if options is None else options
    sources = source_list(sources)
    out = output_path(out)
    keys = ImageKeys()
    done = open_output(out, status, keys)
    summary = BulkSummary(out=out, torn_bytes=done.torn_bytes, unreadable_lines=done.unreadable)
    stop, counted = threading.Event(), []
    if count:
        threading.Thread(target=_counter, args=(sources, stop, counted), daemon=True, name="capkit-count").start()
    bar = progress_bar(progress)
    writer = LineWriter(out, group, interval)
    run = _Run(captioner, done, summary, writer, skip_by == "hash", batch_size, options, bar, counted)
    pool = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="capkit-reader") if readers else None
    start = time.perf_counter()
    try:
        run.consume(listed_once(sources, summary, keys), pool, readers)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        stop.set()
        summary.seconds = time.perf_counter() - start
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        writer.close()  # the lines done so far, complete
    return summary


__all__ = ["SKIP_BY", "error_caption", "file_sha256", "listed_once", "progress_bar", "run_bulk", "stderr_status",
           "unseen_inputs"]
