"""A bulk run's output file: JSON lines appended in groups, and what an earlier run already wrote (for resuming).

Shared by the local run (:mod:`capkit.bulk.local`) and the Ray run (:mod:`capkit.bulk.ray`): both open the
output with :func:`open_output`, which refuses a file that is not capkit's output, drops a torn last line,
reads back the images already done and says so on ``status``, and write with :class:`LineWriter`.

The output is capkit's or nothing: ``out`` must be absent, empty, or a regular file whose first line is one
of capkit's (a JSON object naming an image), so that a device (``/dev/zero``), a FIFO, a picture or any
other file given as ``--out`` by mistake is refused in one line, never read whole, truncated or appended
to. Every line is read back in pieces of at most :data:`MAX_OUTPUT_LINE` bytes, and no longer line is
written.

A file name that is not valid UTF-8 (Linux allows any bytes) is written as ``image`` with each undecodable
byte shown as ``\\xNN``, and its exact bytes in ``image_bytes`` (base64): the line is valid UTF-8, and the
resume reads the name back exactly. Images are told apart by :class:`ImageKeys`: their resolved paths.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Optional, Union

import numpy as np

from capkit.runtime.errors import CapkitError, Status, printable
from capkit.runtime.image_files import ImageError, open_regular_file

MAX_OUTPUT_LINE = 4 << 20  # bytes a line may take: a caption line is well under 1 MB even for a 64K-character name
FIRST_BYTES = b'{"image"'  # how every line capkit writes starts (also after `jq -c`)
NOT_OURS = "--out takes a new file, an empty one or the JSONL file of an earlier bulk run"


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


def _realpath(name: str) -> str:
    try:
        return os.path.realpath(name)
    except (OSError, ValueError):  # a NUL in the name (no file has one): the name made absolute is the key
        return os.path.abspath(name)


class ImageKeys:
    """What makes two names one image: the resolved path (the current folder, ``.``, ``..`` and symbolic
    links resolved), so that ``dir/./x.png``, ``dir/x.png`` and a link to it are captioned once. A name's
    folder is resolved once per run (cached; a run's images share few folders), the name itself costs one
    ``lstat``. A name that names nothing (a missing file, a listing line) resolves like a path too."""

    def __init__(self, folders: int = 4096):
        self._folder = functools.lru_cache(maxsize=folders)(_realpath)

    def __call__(self, name: str) -> str:
        folder, base = os.path.split(name)
        if base in ("", ".", ".."):
            return _realpath(name)
        path = os.path.join(self._folder(folder or os.curdir), base)
        return _realpath(path) if os.path.islink(path) else path


# -- lines --------------------------------------------------------------------------------------------------------
def exact_names(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a result's JSON object) with a name that is not UTF-8 shown with ``\\xNN`` escapes in
    ``image`` and kept exactly in ``image_bytes`` (see the module); other names as they are."""
    image = data.get("image")
    if isinstance(image, str) and not image.isascii() and not _is_utf8(image):
        data = {**_exact_name(image), **{field: value for field, value in data.items() if field != "image"}}
    return data


def caption_object(caption: Any) -> dict[str, Any]:
    """A Caption as ``capkit caption --json`` prints it and ``capkit serve`` answers it (one function, so that the
    two cannot drift): its ``to_dict()``, a name that is not UTF-8 kept exactly (:func:`exact_names`)."""
    return exact_names(caption.to_dict())


def encode_line(data: dict[str, Any]) -> bytes:
    """One output line, valid UTF-8: a name that is not UTF-8 also goes into ``image_bytes`` (see the module)."""
    data = exact_names(data)
    try:
        return json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate no file name has: JSON's \udXXX escape reads back exactly
        return json.dumps(data).encode("ascii") + b"\n"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # lone surrogates: the undecodable bytes of a file name (surrogateescape)
        return False


def _exact_name(image: str) -> dict[str, str]:
    """``image`` and ``image_bytes`` for a file name that is not UTF-8."""
    try:
        raw = os.fsencode(image)
    except UnicodeEncodeError:  # not a file name's escapes either: left to JSON's escapes
        return {"image": image}
    return {"image": raw.decode("utf-8", "backslashreplace"), "image_bytes": base64.b64encode(raw).decode("ascii")}


def decode_line(raw: bytes) -> Optional[dict[str, Any]]:
    """A line read back: the JSON object, with ``image`` the exact name; None when it is not a capkit line.
    (Lines an older capkit wrote with raw undecodable bytes read back too, through surrogateescape.)"""
    try:
        data = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image_bytes"), str):
        try:
            data["image"] = os.fsdecode(base64.b64decode(data["image_bytes"], validate=True))
        except ValueError:
            return None
    return data if isinstance(data.get("image"), str) else None


def bounded_lines(f: BinaryIO, name: str) -> Iterator[bytes]:
    """The lines of an output file, each read in one piece of at most MAX_OUTPUT_LINE bytes; a longer one is
    a BulkError (capkit writes none), not read into memory."""
    number = 0
    for raw in iter(lambda: f.readline(MAX_OUTPUT_LINE + 1), b""):
        number += 1
        if len(raw) > MAX_OUTPUT_LINE:
            raise BulkError(f"{name} line {number:,}: longer than {MAX_OUTPUT_LINE:,} bytes, not a line capkit "
                            f"writes; {NOT_OURS}")
        yield raw


# -- the resume step ----------------------------------------------------------------------------------------------
def drop_torn_line(path: Union[str, os.PathLike]) -> int:
    """Truncates ``path`` after its last newline (a line a crash cut short); returns the bytes dropped. A torn
    line is part of one line, so a tail over MAX_OUTPUT_LINE bytes is not one: a BulkError, nothing dropped."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0 and size - end <= MAX_OUTPUT_LINE:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if size - end > MAX_OUTPUT_LINE:
            raise BulkError(f"{printable(os.fsdecode(path))}: ends with more than {MAX_OUTPUT_LINE:,} bytes without "
                            f"a newline, not a line capkit cut short; {NOT_OURS}")
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        return size - end


def check_capkit_output(f: BinaryIO, name: str) -> None:
    """Refuses (BulkError) a file whose first line is not a capkit output line; reads that line only. A file
    with no newline at all is one torn line: it must start as capkit's lines do."""
    first = f.readline(MAX_OUTPUT_LINE + 1)
    if not first:
        return
    if len(first) > MAX_OUTPUT_LINE:
        why = f"its first line is longer than {MAX_OUTPUT_LINE:,} bytes"
    elif first.endswith(b"\n"):
        why = None if decode_line(first) is not None else "its first line is not a JSON object with an image"
    else:
        why = None if first.startswith(FIRST_BYTES) else "it does not start with a JSON object with an image"
    if why:
        raise BulkError(f"{name}: not capkit's output ({why}); {NOT_OURS}")


@dataclass
class Done:
    """What an output file already holds: the images (keys of paths, and content hashes where recorded)."""

    paths: KeySet  # every image with a line
    failed: KeySet  # those whose line is an error
    hashes: KeySet
    lines: int = 0
    unreadable: int = 0  # complete lines that are not a JSON object with an image: ignored (redone)
    torn_bytes: int = 0


def read_done(path: Union[str, os.PathLike], keys: Optional[ImageKeys] = None) -> Done:
    """The images an output file holds, keyed by ``keys`` (resolved paths), its torn last line dropped first
    (the file is truncated). Refuses (BulkError) a file that is not capkit's output, before touching it."""
    keys = keys or ImageKeys()
    done = Done(KeySet(), KeySet(), KeySet())
    if not os.path.exists(path):
        return done
    name = printable(os.fsdecode(path))
    try:
        with open_regular_file(path, name) as f:  # a device or a FIFO is refused, not read
            check_capkit_output(f, name)
        done.torn_bytes = drop_torn_line(path)
        with open_regular_file(path, name) as f:
            for raw in bounded_lines(f, name):
                data = decode_line(raw)
                if data is None:
                    done.unreadable += 1
                    continue
                done.lines += 1
                key = keys(data["image"])
                done.paths.add(key)
                if "error" in data:
                    done.failed.add(key)
                if isinstance(data.get("sha256"), str):
                    done.hashes.add(data["sha256"])
    except ImageError as e:
        raise BulkError(f"{e}; {NOT_OURS}") from None
    return done


def output_path(out: Any) -> str:
    """``out`` (str, bytes or os.PathLike) as a str; anything else is a BulkError, not a TypeError."""
    try:
        if isinstance(out, (str, bytes, os.PathLike)) and os.fsdecode(out):
            return os.fsdecode(out)
    except TypeError:  # a PathLike whose __fspath__ gives neither str nor bytes
        pass
    got = repr(out) if isinstance(out, (str, bytes)) else type(out).__name__
    raise BulkError(f"out must be a file path (str, bytes or os.PathLike), got {got}")


def open_output(out: str, status: Status, keys: Optional[ImageKeys] = None) -> Done:
    """The resume step of every bulk run: ``out`` checked (absent, empty, or capkit's output), its torn last
    line dropped and the images it holds read back, each finding said in one line on ``status``."""
    if os.path.isdir(out):
        raise BulkError(f"{printable(out)}: is a folder; --out takes a file (captions.jsonl)")
    try:
        done = read_done(out, keys)
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
        name = printable(os.fsdecode(path))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:  # without blocking: a FIFO put there since the resume step is refused, not waited on
            self._fd = os.open(path, flags, 0o644)
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name
            raise BulkError(f"{name}: cannot write: {getattr(e, 'strerror', None) or e}") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise BulkError(f"{name}: not a regular file; {NOT_OURS}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(self._fd, True)
        self.path = path
        self.group, self.interval, self.sync_interval = group, interval, sync_interval
        self._buffer: list[bytes] = []
        self._last = self._synced = time.monotonic()
        self._dirty = False

    def write(self, data: dict[str, Any]) -> bool:
        """Queues one line; False when it would be over MAX_OUTPUT_LINE (a caption of huge words) and an error
        line for its image took its place."""
        line = encode_line(data)
        fits = len(line) <= MAX_OUTPUT_LINE
        if not fits:
            image = data.get("image")
            problem = f"its line would take {len(line):,} bytes, over the {MAX_OUTPUT_LINE:,} a line may"
            line = encode_line({"image": image, "error": f"{printable(str(image))[:200]}: {problem}"})
        self._buffer.append(line)
        if len(self._buffer) >= self.group or time.monotonic() - self._last >= self.interval:
            self.flush()
        return fits

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


__all__ = ["BulkError", "BulkSummary", "Done", "ImageKeys", "KeySet", "LineWriter", "MAX_OUTPUT_LINE",
           "caption_object", "check_capkit_output", "decode_line", "digest64", "drop_torn_line", "encode_line",
           "open_output", "output_path", "read_done"]
