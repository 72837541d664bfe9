"""The bundle: a folder with two ONNX graphs and ``capkit.json``, the manifest that describes them.

This module is the folder: reading the manifest file safely (:func:`read_manifest`), keeping every
file the manifest names inside the folder (links included), the graphs' digests and their
external-data files, and where a bundle is looked for by default. The manifest's schema is
:mod:`capkit.runtime.manifest`; docs/bundle.md describes the format.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from capkit.runtime.errors import one_line
from capkit.runtime.limits import DEFAULT_LIMITS, Limits
from capkit.runtime.manifest import MANIFEST_NAME, BundleError, Manifest

ENCODER_FILE = "encoder.onnx"  # the file names `capkit export` gives the graphs (the manifest names them)
DECODER_FILE = "decoder_step.onnx"
ORT_ENCODER_FILE, ORT_DECODER_FILE = "encoder.ort", "decoder_step.ort"  # an ORT-format bundle's graphs
OPERATOR_CONFIG_FILE = "required_operators_and_types.config"  # an ORT-format bundle's operator list (for reduced builds)
RUNS_DIR = Path("runs")  # training writes runs/<name>/ and points runs/latest at the newest
LATEST_RUN = RUNS_DIR / "latest"
DEFAULT_BUNDLE = LATEST_RUN / "bundle"  # where `capkit export` writes and `capkit caption` looks by default
MODEL_ENV = "CAPKIT_MODEL"  # overrides DEFAULT_BUNDLE for `capkit caption` and `Captioner()`


def default_bundle() -> Path:
    return Path(os.environ.get(MODEL_ENV) or DEFAULT_BUNDLE)


EXTERNAL_DATA_MARKER = b"\n\x08location\x12"  # how an ONNX file names an external-data file (see below)


def _digest(path: Path, marker: bytes = b"") -> tuple[str, bool]:
    """The hex sha256 of a file and whether ``marker`` occurs in it, in one pass over one reused
    buffer (no new 1 MB object per chunk, no second read of a ~100 MB graph)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    found, tail, overlap = False, b"", max(len(marker) - 1, 0)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
            if marker and not found:  # also across the boundary with the previous chunk
                found = buffer.find(marker, 0, size) >= 0 or (tail + bytes(view[:min(overlap, size)])).find(marker) >= 0
                tail = bytes(view[max(0, size - overlap):size])
    return digest.hexdigest(), found


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return _digest(path)[0]


def _inside(folder: Path, name: str) -> Path:
    """``folder/name``, refusing absolute paths, ``..`` and links that lead outside the folder."""
    if not name or "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise BundleError(f"{folder}: file name {name!r} must be a plain name inside the bundle")
    try:
        path = (folder / name).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise BundleError(f"{folder}: {name!r} cannot be resolved ({_os_reason(e)})") from None
    if folder.resolve() not in path.parents:
        raise BundleError(f"{folder}: {name!r} points outside the bundle")
    return path


def _external_data_files(onnx_path: Path) -> list[str]:
    """Names of the external-data files an ONNX model refers to, read without the onnx package.

    External data is recorded as ``StringStringEntryProto`` entries with key ``location``; a scan
    of the protobuf bytes for that key finds them without parsing the graph.
    """
    data = onnx_path.read_bytes()
    names, marker, start = [], EXTERNAL_DATA_MARKER, 0
    while (i := data.find(marker, start)) >= 0:
        j = i + len(marker)
        length, shift = 0, 0
        while j < len(data):  # protobuf varint length (a truncated one ends the scan; ONNX Runtime refuses the file)
            byte = data[j]
            length |= (byte & 0x7F) << shift
            j += 1
            shift += 7
            if not byte & 0x80:
                break
        names.append(data[j:j + length].decode("utf-8", "replace"))
        start = j + length
    return sorted(set(names))


@dataclass(frozen=True)
class Bundle:
    folder: Path
    manifest: Manifest

    @property
    def encoder_path(self) -> Path:
        return _inside(self.folder, self.manifest.encoder.file)

    @property
    def decoder_path(self) -> Path:
        return _inside(self.folder, self.manifest.decoder.file)

    def named_files(self) -> dict[str, Path]:
        """The bundle's own files besides the manifest, by the names the manifest (and the graphs' external-data
        references) give them, each with its resolved path inside the folder: both graphs, their external-data
        files, and in an ORT-format bundle its operator config (:data:`OPERATOR_CONFIG_FILE`, an input of
        reduced ONNX Runtime builds, not needed at run time) where it is a file inside the folder."""
        files: dict[str, Path] = {}
        for name in (self.manifest.encoder.file, self.manifest.decoder.file):
            path = files[name] = _inside(self.folder, name)
            files.update((extra, _inside(self.folder, extra)) for extra in _external_data_files(path))
        if self.manifest.graph_format == "ort":
            try:
                config = _inside(self.folder, OPERATOR_CONFIG_FILE)
            except BundleError:  # a link leading outside: not the bundle's
                config = None
            if config is not None and config.is_file():
                files[OPERATOR_CONFIG_FILE] = config
        return files

    def graph_files(self) -> list[Path]:
        """Every file the graphs need: both graphs and the external-data files they name, if any."""
        return [path for name, path in self.named_files().items() if name != OPERATOR_CONFIG_FILE]

    def files(self) -> list[Path]:
        """:meth:`named_files`' paths."""
        return list(self.named_files().values())

    def size_bytes(self) -> int:
        """Bytes of :meth:`graph_files`: what an app ships (the manifest aside)."""
        return sum(path.stat().st_size for path in self.graph_files())


def _os_reason(error: BaseException) -> str:
    """The reason of an OSError without its file name (the message names the file already), one line."""
    return one_line(error.strerror if isinstance(error, OSError) and error.strerror else error)


def _stat(path: Path, folder: Path, what: str) -> Optional[os.stat_result]:
    """``os.stat(path)``: None when there is nothing there; BundleError when it cannot be read."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # a symlink loop, a path through a file, a NUL, ...
        raise BundleError(f"{folder}: {what} cannot be read ({_os_reason(e)})") from None


def read_manifest(folder: Path, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The parsed JSON of ``folder/capkit.json``: a regular file (a FIFO or a device is refused without
    opening it), at most ``limits.max_manifest_bytes``, UTF-8 JSON. Raises BundleError."""
    path = folder / MANIFEST_NAME
    info = _stat(path, folder, MANIFEST_NAME)
    if info is None:
        raise BundleError(f"{folder}: not a bundle, {MANIFEST_NAME} is missing")
    too_big = BundleError(f"{folder}: {MANIFEST_NAME} is over the limit of {limits.max_manifest_bytes:g} bytes "
                          "(Limits.max_manifest_bytes; raise it to allow more)")
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{folder}: {MANIFEST_NAME} is not a regular file")
    if info.st_size > limits.max_manifest_bytes:
        raise too_big
    try:  # O_NONBLOCK: a FIFO swapped in after the stat does not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BundleError(f"{folder}: {MANIFEST_NAME} is not a regular file")
            raw = f.read(int(limits.max_manifest_bytes) + 1)
    except OSError as e:
        raise BundleError(f"{folder}: {MANIFEST_NAME} cannot be read ({_os_reason(e)})") from None
    if len(raw) > limits.max_manifest_bytes:
        raise too_big
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{folder}: {MANIFEST_NAME}: not a manifest, not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise BundleError(f"{folder}: {MANIFEST_NAME}: not a usable manifest, JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more digits than Python converts
        raise BundleError(f"{folder}: {MANIFEST_NAME}: not a valid JSON manifest ({one_line(e)})") from None


def load_bundle(folder: Optional[str | os.PathLike] = None, verify: bool = True,
                limits: Limits = DEFAULT_LIMITS) -> Bundle:
    """Reads and checks a bundle folder: every manifest field (:func:`check_manifest`, within ``limits``),
    file names, and (``verify``) the sha256 of each graph and its external-data files."""
    folder = Path(folder) if folder is not None else default_bundle()
    info = _stat(folder, folder, "the bundle folder")
    if info is None:
        raise BundleError(f"{folder}: no such bundle folder (run `capkit export`, or pass --model)")
    if not stat.S_ISDIR(info.st_mode):
        raise BundleError(f"{folder}: not a bundle folder (a bundle is a folder with {MANIFEST_NAME} in it)")
    data = read_manifest(folder, limits)
    try:
        manifest = Manifest.from_dict(data, limits)
    except BundleError as e:
        raise BundleError(f"{folder}: {e}") from None
    bundle = Bundle(folder, manifest)
    for graph, path in ((manifest.encoder, bundle.encoder_path), (manifest.decoder, bundle.decoder_path)):
        info = _stat(path, folder, graph.file)
        if info is None:
            raise BundleError(f"{folder}: {graph.file} is missing")
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{folder}: {graph.file} is not a regular file")
        if verify:
            actual, external = _digest(path, EXTERNAL_DATA_MARKER)  # one read for both checks
            if actual != graph.sha256:
                raise BundleError(f"{folder}: {graph.file} has sha256 {actual[:12]}..., the manifest says {graph.sha256[:12]}...")
            for name in _external_data_files(path) if external else ():
                if not _inside(folder, name).is_file():
                    raise BundleError(f"{folder}: external data file {name!r} of {graph.file} is missing")
    return bundle
