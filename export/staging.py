"""Writing a bundle folder without touching what capkit did not write.

Every export (the fp32 bundle, its int8 and fp16 variants) is built whole in a fresh staging
folder next to the target, ``.capkit-staging-<target name>-<pid>-<random>`` (same filesystem, so
the last step is a rename), checked, then swapped in by :func:`staged_bundle`:

- target absent, or an empty folder: the staging folder is renamed to it (one atomic rename);
- target a capkit bundle (it has a ``capkit.json``) holding only the bundle's own files (the
  manifest, the graphs and external-data files it names; with an unreadable manifest, capkit's
  standard file names): the two folders are exchanged in one atomic ``renameat2(RENAME_EXCHANGE)``,
  then the old bundle (now at the staging name) is removed. At every instant the target path holds
  the whole old bundle or the whole new one. Where the kernel or filesystem cannot exchange, the
  old folder is renamed aside (``.capkit-old-...``) and the new one renamed in: the target is then
  absent for the moment between the two renames, and an export killed right there leaves the old
  bundle aside, which the next export renames back before doing anything else;
- anything else that is not empty (a folder that is not a bundle, or a bundle with other files in
  it): refused with one line, unless ``force``. With ``force`` the bundle's files are added to the
  folder one by one (the manifest removed first and written last, so the folder is never a mix of
  two bundles, but it is no bundle while that runs), the previous bundle's own files are replaced
  or removed, and no other file is touched: a name capkit is about to write that belongs to another
  file is refused, never overwritten.

The staging folder is removed on any failure (even KeyboardInterrupt). One left by a killed export
(its pid no longer alive on this machine) is removed by the next export to the same target.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Iterator, Optional

from capkit.runtime.bundle import (DECODER_FILE, ENCODER_FILE, OPERATOR_CONFIG_FILE, ORT_DECODER_FILE, ORT_ENCODER_FILE,
                                   load_bundle)
from capkit.runtime.errors import CapkitError, first_line
from capkit.runtime.manifest import MANIFEST_NAME

STAGING_PREFIX = ".capkit-staging-"
ASIDE_PREFIX = ".capkit-old-"
NAME_CHARS = 100  # of the target's name in a staging folder's name (a file name has 255 bytes at most)
STANDARD_FILES = (MANIFEST_NAME, MANIFEST_NAME + ".tmp", ENCODER_FILE, DECODER_FILE, ENCODER_FILE + ".data",
                  DECODER_FILE + ".data", ORT_ENCODER_FILE, ORT_DECODER_FILE, OPERATOR_CONFIG_FILE)  # what capkit
# writes into a bundle folder (an ORT-format bundle: the .ort graphs and their operator config)
RENAME_EXCHANGE = 2  # linux/fs.h


class ExportError(CapkitError):
    """A model or an export target that cannot be used; one line naming the problem."""


def resolve_target(out: str | os.PathLike) -> Path:
    """The absolute target folder (a symlink to a folder: the folder it names), refusing one that is
    a file or lies under a file, with one line."""
    target = Path(os.path.abspath(out))
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if not target.name:
        raise ExportError(f"{out}: not a folder capkit can export into")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{out}: is a file, not a folder")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"{out}: {parent} is a file, not a folder")
            break
    return target


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid capkit wrote: leave the folder alone
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def _work_folders(target: Path) -> list[tuple[str, Path, int]]:
    """(kind, folder, pid) of the staging and set-aside folders of exports to ``target``."""
    found = []
    stem = target.name[:NAME_CHARS]
    pattern = re.compile(r"(\d{1,10})-[0-9a-f]{8}")
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            for kind, prefix in (("staging", STAGING_PREFIX), ("aside", ASIDE_PREFIX)):
                head = f"{prefix}{stem}-"
                if entry.name.startswith(head) and (m := pattern.fullmatch(entry.name[len(head):])):
                    if entry.is_dir(follow_symlinks=False):
                        found.append((kind, Path(entry.path), int(m.group(1))))
    return found


def clean_stale(target: Path) -> list[Path]:
    """Removes the staging folders of earlier exports to ``target`` whose process is gone; a bundle
    set aside by a killed swap is renamed back first when the target is absent. Returns what it removed."""
    stale = [(kind, folder) for kind, folder, pid in _work_folders(target) if not _pid_alive(pid)]
    if not os.path.lexists(target):
        aside = sorted((f for kind, f in stale if kind == "aside"), key=lambda f: f.stat().st_mtime, reverse=True)
        for folder in aside[:1]:
            with contextlib.suppress(OSError):
                os.rename(folder, target)
                stale = [(k, f) for k, f in stale if f != folder]
    removed = []
    for _, folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            removed.append(folder)
    return removed


def bundle_files(folder: Path) -> Optional[set[str]]:
    """The names of a bundle folder's own files (its manifest, the graphs and external-data files the
    manifest names, capkit's standard names when the manifest cannot be read), or None when the
    folder has no ``capkit.json``."""
    if not (folder / MANIFEST_NAME).is_file():
        return None
    own = {MANIFEST_NAME, MANIFEST_NAME + ".tmp"}
    try:
        bundle = load_bundle(folder, verify=False)
        names = [bundle.manifest.encoder.file, bundle.manifest.decoder.file]
        names += [p.name for p in bundle.files() if p.parent == folder.resolve()]
        own |= {name for name in names if isinstance(name, str) and "/" not in name and "\\" not in name}
    except Exception:  # noqa: BLE001 - an unreadable or foreign manifest: capkit's standard names only
        own |= set(STANDARD_FILES)
    return own


def _foreign(target: Path, own: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(target) if name not in own)


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_destination(target: Path, force: bool) -> str:
    """How ``target`` will receive the bundle: "new", "replace" or "merge" (force); refuses the rest."""
    if not os.path.lexists(target):
        return "new"
    try:
        entries = os.listdir(target)
    except OSError as e:
        raise ExportError(f"{target}: cannot read the folder ({e.strerror or type(e).__name__})") from None
    if not entries:
        return "new"
    own = bundle_files(target)
    foreign = _foreign(target, own or set())
    if not foreign:
        return "replace"
    if force:
        return "merge"
    if own is None:
        raise ExportError(f"{target}: not empty and not a capkit bundle (it holds {_listing(foreign)}); choose "
                          "another --out, or pass --force to add the bundle's files next to them")
    raise ExportError(f"{target}: a capkit bundle with other files in it ({_listing(foreign)}); move them out, or "
                      "pass --force to replace only the bundle's own files")


def _fsync_tree(folder: Path) -> None:
    """Flushes the staged files and the folder itself, so a crash after the rename finds whole files."""
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _work_name(target: Path, prefix: str) -> Path:
    return target.parent / f"{prefix}{target.name[:NAME_CHARS]}-{os.getpid()}-{secrets.token_hex(4)}"


def _install(staging: Path, target: Path, force: bool) -> None:
    """Puts the staged bundle at ``target`` (see the module docstring for each case)."""
    _fsync_tree(staging)
    mode = check_destination(target, force)
    if mode == "new":
        os.rename(staging, target)  # replaces an empty folder atomically; fails on a non-empty one
    elif mode == "replace":
        if not _exchange(staging, target):
            aside = _work_name(target, ASIDE_PREFIX)
            os.rename(target, aside)
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(aside, target)  # the old bundle back in place
                raise
            shutil.rmtree(aside, ignore_errors=True)
        # after the exchange the old bundle is at the staging name; the caller's cleanup removes it
    else:
        _merge(staging, target)
    _fsync_dir(target.parent)


def _merge(staging: Path, target: Path) -> None:
    """--force: the bundle's files into a folder that holds other files too; those are never touched."""
    own = bundle_files(target) or set()
    new = sorted(os.listdir(staging))
    taken = [name for name in new if os.path.lexists(target / name) and name not in own]
    if taken:
        raise ExportError(f"{target}: {_listing(taken)} would be overwritten, and capkit did not write "
                          f"{'it' if len(taken) == 1 else 'them'}; move {'it' if len(taken) == 1 else 'them'} out "
                          "or choose another --out")
    if (target / MANIFEST_NAME).is_file() and MANIFEST_NAME in own:
        os.unlink(target / MANIFEST_NAME)  # from here the folder is no bundle, not a mix of two
    for name in new:
        if name != MANIFEST_NAME:
            os.replace(staging / name, target / name)
    for name in sorted(own - set(new)):
        path = target / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    os.replace(staging / MANIFEST_NAME, target / MANIFEST_NAME)


@contextlib.contextmanager
def staged_bundle(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A fresh staging folder for a bundle bound for ``out``; on a clean exit of the ``with`` block its
    contents are swapped in (module docstring), and the staging folder is removed whatever happens.

    The target is checked before the block runs, so that a refused target costs no export; stale
    staging folders of killed exports to the same target are removed first."""
    target = resolve_target(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"{out}: cannot create {target.parent} ({e.strerror or type(e).__name__})") from None
    clean_stale(target)
    check_destination(target, force)
    staging = _work_name(target, STAGING_PREFIX)
    try:
        staging.mkdir()
    except OSError as e:
        raise ExportError(f"{out}: cannot write next to it ({e.strerror or type(e).__name__})") from None
    try:
        yield staging
        try:
            _install(staging, target, force)
        except CapkitError:
            raise
        except OSError as e:
            raise ExportError(f"{out}: could not put the new bundle in place ({e.strerror or first_line(e)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["ASIDE_PREFIX", "ExportError", "STAGING_PREFIX", "bundle_files", "check_destination", "clean_stale",
           "resolve_target", "staged_bundle"]
