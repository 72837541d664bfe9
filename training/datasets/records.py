"""What every dataset reader returns and shares: :class:`CaptionedImage` records grouped in
:data:`Splits`, :class:`DatasetError`, and the functions the readers use to read files, find an image
folder, merge caption rows into records, leave out missing images and split records by a seed."""

from __future__ import annotations

import json
import os
import reprlib
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from capkit.runtime.errors import CapkitError, one_line, printable
from capkit.runtime.image_files import file_kind

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test"}
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# Where the images of Flickr and Karpathy files usually live, relative to the annotation file's folder.
IMAGE_FOLDER_GUESSES = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images",
                        "flickr30k_images", "../images", "../Images", "../Flicker8k_Dataset", "../Flickr8k_Dataset",
                        "../flickr30k-images", "../flickr30k_images", "..")

Source = str | os.PathLike
ImageId = Union[int, str]  # an image id as a dataset gives it
ID_BOUND = 2 ** 63  # an integer id fits in 64 bits (COCO's have 6 digits); a larger one is a corrupt file


@dataclass(frozen=True)
class CaptionedImage:
    image: Path  # absolute path of the image file
    captions: tuple[str, ...]  # raw reference captions
    image_id: str  # stable id (COCO id, Flickr file name, ...)


class DatasetError(CapkitError):
    """A dataset that cannot be read; the message names the file or folder and the problem in one line."""


Splits = dict[str, list[CaptionedImage]]
# (image id, image path, caption, split or None): one caption as a line-oriented reader finds it.
Row = tuple[str, Path, str, Optional[str]]


def user_path(source: Source) -> Path:
    """``source`` with a leading ``~`` expanded; kept as it is when it names no user this system knows."""
    try:
        return Path(source).expanduser()
    except RuntimeError:  # "~nobody/data.json": then it is no such file, said where it is opened
        return Path(source)


def shown(value: Any) -> str:
    """A dataset's value as a message quotes it: bounded (a hostile value may be megabytes), on one line,
    JSON's words for JSON's values (``true``, ``null``, ``NaN``)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return json.dumps(value)  # NaN, Infinity, 1.5
    if isinstance(value, int) and abs(value) >= 10 ** 30:
        return f"an integer of {len(str(abs(value)))} digits"
    return printable(reprlib.repr(value))


def check_id(value: Any, where: str) -> ImageId:
    """An image id as a dataset gives it: an integer that fits in 64 bits (not a boolean) or a non-empty string.
    Anything else (a list, an object, a float, NaN, true, null) is a DatasetError naming ``where``."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool) and -ID_BOUND <= value < ID_BOUND:
        return value
    what = "an integer that fits in 64 bits" if isinstance(value, int) and not isinstance(value, bool) else \
        "an integer or a non-empty string"
    raise DatasetError(f"{where}: the image id must be {what}, got {type(value).__name__} {shown(value)}")


def _regular_file(path: Path) -> None:
    """Refuses, before it is opened, a path that is not a regular file: a FIFO would wait for a writer forever."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"{path}: no such file") from None
    except OSError as e:  # a name too long, a link loop, no permission ...
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError:  # a NUL in the name
        raise DatasetError(f"{printable(str(path))}: not a valid file name") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{path}: not a regular file ({file_kind(mode)})")


def json_problem(error: Exception) -> str:
    """Why a JSON text did not parse, in a few words: the parser's complaint, a number too long for Python's
    int (over 4,300 digits) or nesting deeper than the parser's recursion allows."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if isinstance(error, json.JSONDecodeError):
        return error.msg
    return one_line(error).split(";")[0]  # "Exceeds the limit (4300 digits) for integer string conversion: ..."


JSON_ERRORS = (ValueError, RecursionError)  # what json.loads raises for a text it cannot read (JSONDecodeError too)


def read_json(path: Path) -> Any:
    _regular_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except UnicodeDecodeError:  # a ValueError: before JSON_ERRORS
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    except JSON_ERRORS as e:
        raise DatasetError(f"{path}: not valid JSON ({json_problem(e)})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None


def read_lines(path: Path) -> list[str]:
    _regular_file(path)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None


def split_name(value: Any, where: str) -> str:
    """The split a dataset's own split word means (``restval`` -> train, ``dev`` -> val ...)."""
    name = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if name is None:
        raise DatasetError(f"{where}: unknown split {shown(value)} (one of {', '.join(SPLIT_NAMES)})")
    return name


def is_file(path: Path) -> bool:
    """Whether ``path`` names a file; False, not an error, for a name the system refuses (too long, a NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def image_folder(given: Optional[Source], guesses: Iterable[Path], probes: Sequence[str], what: Path) -> Path:
    """The folder that image paths ``probes`` are relative to: ``given`` if passed (it must exist),
    else the first guess holding one of the probes."""
    if given is not None:
        folder = user_path(given)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such image folder")
        return folder.resolve()
    guesses = list(dict.fromkeys(Path(os.path.normpath(g)) for g in guesses))
    for folder in guesses:
        if folder.is_dir() and any(is_file(folder / p) for p in probes[:5]):
            return folder.resolve()
    looked = ", ".join(str(g) for g in guesses[:4]) + (", ..." if len(guesses) > 4 else "")
    raise DatasetError(f"{what}: cannot find its images (looked in {looked}); pass the image folder")


def image_folder_beside(path: Path, given: Optional[Source], names: Sequence[str]) -> Path:
    """The image folder of a Karpathy or Flickr file at ``path``: ``given``, else the usual folders
    beside it (IMAGE_FOLDER_GUESSES) probed with a spread of the image paths ``names``."""
    guesses = [path.parent / g for g in IMAGE_FOLDER_GUESSES[:6]] + [path.parent] + \
              [path.parent / g for g in IMAGE_FOLDER_GUESSES[6:]]
    return image_folder(given, guesses, list(names[:: max(len(names) // 5, 1)]), path)


def drop_missing(records: list[CaptionedImage], source: Path) -> list[CaptionedImage]:
    """Records whose image file exists; one warning for the others; DatasetError if none exists."""
    present = [r for r in records if is_file(r.image)]
    missing = len(records) - len(present)
    if missing and not present:
        first = printable(str(records[0].image))
        raise DatasetError(f"{source}: none of its {len(records)} images exist (first: {first})")
    if missing:
        first = printable(str(next(r.image for r in records if not is_file(r.image))))
        warnings.warn(f"{source}: {missing} of {len(records)} images do not exist and are left out (first: {first})",
                      stacklevel=3)
    return present


def random_split(records: Sequence[CaptionedImage], seed: int = 0,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS) -> Splits:
    """A deterministic train/val/test split by image: a seeded shuffle cut by ``fractions``; each
    split keeps the source's order. val and test get at least one image when there are three or more."""
    n = len(records)
    n_val, n_test = int(round(n * fractions[1])), int(round(n * fractions[2]))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    else:
        n_val = n_test = 0
    order = np.random.default_rng(seed).permutation(n)
    test = set(order[:n_test].tolist())
    val = set(order[n_test:n_test + n_val].tolist())
    splits: Splits = {s: [] for s in SPLITS}
    for i, r in enumerate(records):
        splits["test" if i in test else "val" if i in val else "train"].append(r)
    return splits


def halve(records: Sequence[CaptionedImage], seed: int) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """(first half, second half) of a seeded shuffle, each in source order."""
    order = np.random.default_rng(seed).permutation(len(records))
    second = set(order[len(records) // 2:].tolist())
    return ([r for i, r in enumerate(records) if i not in second], [r for i, r in enumerate(records) if i in second])


def merge(rows: Iterable[Row], where: Path) -> tuple[list[CaptionedImage], dict[str, Optional[str]]]:
    """(id, image, caption, split) rows -> records in first-seen order, and each id's split."""
    captions: dict[str, list[str]] = {}
    images: dict[str, Path] = {}
    splits: dict[str, Optional[str]] = {}
    for image_id, image, caption, split in rows:
        if image_id not in captions:
            captions[image_id], images[image_id], splits[image_id] = [], image, split
        elif image != images[image_id]:  # one id, two files: merging would silently drop one image
            files = " and ".join(printable(str(p)) for p in (images[image_id], image))
            raise DatasetError(f"{where}: image id {shown(image_id)} names two files ({files})")
        elif split is not None and splits[image_id] not in (None, split):
            raise DatasetError(f"{where}: image {shown(image_id)} is in two splits ({splits[image_id]} and {split})")
        caption = caption.strip()
        if caption:
            captions[image_id].append(caption)
    records = [CaptionedImage(images[i], tuple(c), i) for i, c in captions.items() if c]
    return records, splits


def by_split(records: list[CaptionedImage], splits: dict[str, Optional[str]], source: Path, seed: int) -> Splits:
    """Records grouped by their split; all without one: a seeded 80/10/10 split."""
    given = [splits[r.image_id] for r in records]
    if all(s is None for s in given):
        return random_split(records, seed)
    if any(s is None for s in given):
        missing = next(r.image_id for r in records if splits[r.image_id] is None)
        raise DatasetError(f"{source}: image {shown(missing)} has no split while others have one")
    out: Splits = {s: [] for s in SPLITS}
    for r in records:
        out[splits[r.image_id]].append(r)  # type: ignore[index]
    return out


__all__ = ["CaptionedImage", "DEFAULT_FRACTIONS", "DatasetError", "ID_BOUND", "IMAGE_FOLDER_GUESSES", "ImageId",
           "JSON_ERRORS", "Row", "SPLITS", "SPLIT_NAMES", "Source", "Splits", "by_split", "check_id", "drop_missing",
           "halve", "image_folder", "image_folder_beside", "is_file", "json_problem", "merge", "random_split",
           "read_json", "read_lines", "shown", "split_name", "user_path"]
