"""A bulk run's output file: JSON lines appended in groups, and what an earlier run already wrote (for resuming).

Shared by the local run (:mod:`capkit.bulk.local`) and the Ray run (:mod:`capkit.bulk.ray`): both open the
output with :func:`open_output`, which drops a torn last line, reads back the images already done and says
so on ``status``, and write with :class:`LineWriter`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from capkit.runtime.errors import CapkitError, Status, printable


class BulkError(CapkitError):
    """A bulk run that cannot start or go on (an output file that cannot be read or written ...)."""


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


def open_output(out: str, status: Status) -> Done:
    """The resume step of every bulk run: ``out`` checked (a file, not a folder), its torn last line dropped
    and the images it holds read back, each finding said in one line on ``status``."""
    if os.path.isdir(out):
        raise BulkError(f"{printable(out)}: is a folder; --out takes a file (captions.jsonl)")
    try:
        done = read_done(out)
    except OSError as e:
        raise BulkError(f"{printable(out)}: cannot read: {e.strerror or e}") from None
    if done.torn_bytes:
        status(f"{printable(out)}: dropped a torn last line ({done.torn_bytes} bytes) left by an interrupted run")
    if done.lines:
        status(f"Resuming: {printable(out)} holds {done.lines:,} images; they are skipped")
    if done.unreadable:
        status(f"Warning: {printable(out)}: {done.unreadable} lines are not captions; their images are captioned again")
    return done


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


@dataclass
class BulkSummary:
    """What a bulk run did, for its one-line summary and ``--json``."""

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

    def count(self, ok: bool) -> None:
        """One image written: captioned, or its error line."""
        self.captioned += ok
        self.failed += not ok

    def line(self) -> str:
        """One line for stderr."""
        done = f"captioned {self.captioned:,} images, {self.failed:,} failed"
        skipped = f", skipped {self.skipped:,} already in {printable(self.out)}" if self.skipped else ""
        repeated = f", {self.repeated:,} listed twice" if self.repeated else ""
        rate = f" in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        failed = f"; the failed images have an \"error\" in {printable(self.out)}" if self.failed else ""
        return done + skipped + repeated + rate + failed


__all__ = ["BulkError", "BulkSummary", "Done", "KeySet", "LineWriter", "digest64", "drop_torn_line", "open_output",
           "read_done"]
