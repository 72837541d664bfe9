"""What every dataset reader returns and shares: :class:`CaptionedImage` records grouped in
:data:`Splits`, :class:`DatasetError`, and the functions the readers use to read files, find an image
folder, merge caption rows into records, leave out missing images and split records by a seed."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from capkit.runtime.errors import CapkitError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test"}
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# Where the images of Flickr and Karpathy files usually live, relative to the annotation file's folder.
IMAGE_FOLDER_GUESSES = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images",
                        "flickr30k_images", "../images", "../Images", "../Flicker8k_Dataset", "../Flickr8k_Dataset",
                        "../flickr30k-images", "../flickr30k_images", "..")

Source = str | os.PathLike


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


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None


def split_name(value: Any, where: str) -> str:
    """The split a dataset's own split word means (``restval`` -> train, ``dev`` -> val ...)."""
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise DatasetError(f"{where}: unknown split {value!r} (one of {', '.join(SPLIT_NAMES)})")
    return name


def image_folder(given: Optional[Source], guesses: Iterable[Path], probes: Sequence[str], what: Path) -> Path:
    """The folder that image paths ``probes`` are relative to: ``given`` if passed (it must exist),
    else the first guess holding one of the probes."""
    if given is not None:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: no such image folder")
        return folder.resolve()
    guesses = list(dict.fromkeys(Path(os.path.normpath(g)) for g in guesses))
    for folder in guesses:
        if folder.is_dir() and any((folder / p).is_file() for p in probes[:5]):
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
    present = [r for r in records if r.image.is_file()]
    missing = len(records) - len(present)
    if missing and not present:
        raise DatasetError(f"{source}: none of its {len(records)} images exist (first: {records[0].image})")
    if missing:
        first = next(r.image for r in records if not r.image.is_file())
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
        elif split is not None and splits[image_id] not in (None, split):
            raise DatasetError(f"{where}: image {image_id} is in two splits ({splits[image_id]} and {split})")
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
        raise DatasetError(f"{source}: image {missing} has no split while others have one")
    out: Splits = {s: [] for s in SPLITS}
    for r in records:
        out[splits[r.image_id]].append(r)  # type: ignore[index]
    return out


__all__ = ["CaptionedImage", "DEFAULT_FRACTIONS", "DatasetError", "IMAGE_FOLDER_GUESSES", "Row", "SPLITS", "SPLIT_NAMES",
           "Source", "Splits", "by_split", "drop_missing", "halve", "image_folder", "image_folder_beside", "merge",
           "random_split", "read_json", "read_lines", "split_name"]
