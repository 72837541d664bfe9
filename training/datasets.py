"""Readers for captioning datasets in their published formats, all returning the same records.

:func:`load_dataset` detects the format of ``source``:

- a folder with ``annotations/captions_{train,val,test}.json`` (the synthetic layout, any COCO-like
  folder) or COCO's own ``annotations/captions_{train,val}2014.json`` (or 2017) beside the
  ``train2014/`` and ``val2014/`` image folders. Each file gives its split. When the folder has no
  test file (COCO 2014/2017 publish no test captions), the val images are split in two halves by a
  seeded shuffle: the first half stays val, the second becomes test. For the standard Karpathy split
  of COCO pass ``dataset_coco.json`` instead;
- one COCO captions file (``{"images", "annotations"}``); it carries no split, so its images are split
  80/10/10 (seeded); ``images=`` is the image folder (default: guessed beside the file);
- a Karpathy split file (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``);
  ``restval`` goes to train; an image is ``images/filepath/filename`` (default root: guessed);
- a Flickr8k/30k token file (``Flickr8k.token.txt``, ``results_20130124.token``: ``NAME.jpg#N<TAB>caption``),
  with Flickr8k's ``*trainImages.txt`` / ``*devImages.txt`` / ``*testImages.txt`` when they sit beside it
  (images listed in none of them are left out); without them, 80/10/10 (seeded);
- a JSONL file (``{"image", "caption" | "captions", "split"?}`` per line) or a CSV file with ``image``
  and ``caption`` columns (``split`` optional); image paths are relative to the file's folder, or to
  ``images=``; several rows of one image merge into one record. Without splits: 80/10/10 (seeded).

Images are not opened here (the training loader skips unreadable ones); entries whose image file does
not exist are left out with one summary warning. Errors are :class:`DatasetError`, one line naming the
file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from capkit.runtime.errors import CapkitError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test"}
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_COCO_FILE = re.compile(r"captions_(train|val|test)(\d{4})?\.json")
# Where the images of Flickr and Karpathy files usually live, relative to the annotation file's folder.
_IMAGE_FOLDER_GUESSES = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images",
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


# ---------------------------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> Any:
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


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None


def _split_name(value: Any, where: str) -> str:
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise DatasetError(f"{where}: unknown split {value!r} (one of {', '.join(SPLIT_NAMES)})")
    return name


def _image_folder(given: Optional[Source], guesses: Iterable[Path], probes: Sequence[str], what: Path) -> Path:
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


def _drop_missing(records: list[CaptionedImage], source: Path) -> list[CaptionedImage]:
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


def _halve(records: Sequence[CaptionedImage], seed: int) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """(first half, second half) of a seeded shuffle, each in source order."""
    order = np.random.default_rng(seed).permutation(len(records))
    second = set(order[len(records) // 2:].tolist())
    return ([r for i, r in enumerate(records) if i not in second], [r for i, r in enumerate(records) if i in second])


def _merge(rows: Iterable[tuple[str, Path, str, Optional[str]]], where: Path) -> tuple[list[CaptionedImage], dict[str, Optional[str]]]:
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


def _by_split(records: list[CaptionedImage], splits: dict[str, Optional[str]], source: Path, seed: int) -> Splits:
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


# ---------------------------------------------------------------------------------------------- COCO


def _coco_records(data: Any, path: Path, images: Optional[Source], guesses: Sequence[Path]) -> list[CaptionedImage]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    files: dict[Any, str] = {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise DatasetError(f"{path}: images[{k}] needs an 'id' and a 'file_name'")
        files[im["id"]] = im["file_name"]
    captions: dict[Any, list[str]] = {i: [] for i in files}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise DatasetError(f"{path}: annotations[{k}] needs an 'image_id' and a 'caption'")
        if ann["image_id"] not in captions:
            raise DatasetError(f"{path}: annotations[{k}] refers to image id {ann['image_id']!r}, not in 'images'")
        if ann["caption"].strip():
            captions[ann["image_id"]].append(ann["caption"].strip())
    folder = _image_folder(images, guesses, list(files.values()), path)
    return [CaptionedImage((folder / files[i]).absolute(), tuple(c), str(i)) for i, c in captions.items() if c]


def _coco_guesses(path: Path, stem_split: Optional[str]) -> list[Path]:
    """Image folders to try for a COCO captions file: ``captions_train2014.json`` -> ``train2014/`` ..."""
    match = _COCO_FILE.fullmatch(path.name)
    names = [f"{match.group(1)}{match.group(2) or ''}", match.group(1)] if match else []
    if stem_split:
        names.append(stem_split)
    bases = [path.parent.parent, path.parent]
    out = []
    for base in bases:
        out += [base / n for n in names] + [base / "images" / n for n in names] + [base / "images"]
    return out + [path.parent.parent, path.parent]


def load_coco_file(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """One COCO captions file: its images split 80/10/10 (seeded)."""
    path = Path(path)
    return _coco_file_splits(_read_json(path), path, images, split_seed)


def _coco_file_splits(data: Any, path: Path, images: Optional[Source], split_seed: int) -> Splits:
    records = _drop_missing(_coco_records(data, path, images, _coco_guesses(path, None)), path)
    return random_split(records, split_seed)


def _coco_folder_files(folder: Path) -> dict[str, Path]:
    """{split: captions file} of a COCO-like folder; empty when it has none."""
    found: dict[str, list[Path]] = defaultdict(list)
    for base in (folder / "annotations", folder):
        if base.is_dir():
            for p in sorted(base.iterdir()):
                m = _COCO_FILE.fullmatch(p.name)
                if m and p.is_file():
                    found[m.group(1)].append(p)
    for split, files in found.items():
        if len(files) > 1:
            raise DatasetError(f"{folder}: several {split} caption files ({', '.join(p.name for p in files)}); "
                               "pass one of them")
    return {s: files[0] for s, files in found.items()}


def load_coco_folder(folder: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """A folder of ``captions_{train,val,test}[YEAR].json``; no test file: val is halved into val and test."""
    folder = Path(folder)
    files = _coco_folder_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no annotations/captions_{{train,val,test}}.json in this folder")
    root = Path(images) if images is not None else folder
    if images is not None and not root.is_dir():
        raise DatasetError(f"{root}: no such image folder")
    splits: Splits = {s: [] for s in SPLITS}
    for split, path in files.items():
        m = _COCO_FILE.fullmatch(path.name)
        sub = f"{split}{m.group(2) or ''}" if m else split
        guesses = [root / sub, root / "images" / sub, root / split, root / "images", root] + _coco_guesses(path, split)
        data = _read_json(path)
        # images= is a root holding per-split folders, or the folder of all images.
        splits[split] = _drop_missing(_coco_records(data, path, None, guesses), path)
    if "test" not in files:
        if "val" in files:
            splits["val"], splits["test"] = _halve(splits["val"], split_seed)
        else:
            splits = random_split(splits["train"], split_seed)
    return splits


# ---------------------------------------------------------------------------------------------- Karpathy


def load_karpathy(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """A Karpathy split file: ``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}``."""
    path = Path(path)
    data = _read_json(path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: not a Karpathy split file (needs an 'images' list)")
    rows = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("filename"), str) or not isinstance(e.get("sentences"), list):
            raise DatasetError(f"{path}: images[{k}] needs a 'filename' and a 'sentences' list")
        rel = str(Path(e.get("filepath") or "") / e["filename"])
        split = _split_name(e.get("split", ""), f"{path}: images[{k}]")
        for s in e["sentences"]:
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                raw = " ".join(s["tokens"])
            if not isinstance(raw, str):
                raise DatasetError(f"{path}: images[{k}] has a sentence without 'raw' text")
            image_id = str(e["cocoid"]) if "cocoid" in e else rel
            rows.append((image_id, rel, raw, split))
    if not rows:
        raise DatasetError(f"{path}: no captions in this file")
    guesses = [path.parent / g for g in _IMAGE_FOLDER_GUESSES[:6]] + [path.parent] + \
              [path.parent / g for g in _IMAGE_FOLDER_GUESSES[6:]]
    folder = _image_folder(images, guesses, [r[1] for r in rows[:: max(len(rows) // 5, 1)]], path)
    records, splits = _merge(((i, (folder / rel).absolute(), c, s) for i, rel, c, s in rows), path)
    records = _drop_missing(records, path)
    return _by_split(records, splits, path, split_seed)


# ---------------------------------------------------------------------------------------------- Flickr


def _flickr_split_files(path: Path) -> dict[str, Path]:
    found = {}
    for split, key in (("train", "trainImages"), ("val", "devImages"), ("test", "testImages")):
        matches = sorted(path.parent.glob(f"*{key}.txt"))
        if matches:
            found[split] = matches[0]
    return found


def load_flickr(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """A Flickr8k/30k token file (``NAME.jpg#N<TAB>caption`` lines), split by the split files beside it."""
    path = Path(path)
    rows = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name = key.rpartition("#")[0] or key
        if not tab or not name.strip():
            raise DatasetError(f"{path}:{n}: expected 'IMAGE#N<TAB>caption'")
        rows.append((name.strip(), caption))
    if not rows:
        raise DatasetError(f"{path}: no captions in this file")
    split_files = _flickr_split_files(path)
    membership: dict[str, str] = {}
    for split, f in split_files.items():
        for name in _read_lines(f):
            if name.strip():
                membership[name.strip()] = split
    guesses = [path.parent / g for g in _IMAGE_FOLDER_GUESSES[:6]] + [path.parent] + \
              [path.parent / g for g in _IMAGE_FOLDER_GUESSES[6:]]
    folder = _image_folder(images, guesses, [r[0] for r in rows[:: max(len(rows) // 5, 1)]], path)
    if split_files:
        rows = [r for r in rows if r[0] in membership]
        if not rows:
            raise DatasetError(f"{path}: none of its images is listed in {', '.join(p.name for p in split_files.values())}")
    records, splits = _merge(((name, (folder / name).absolute(), c, membership.get(name)) for name, c in rows), path)
    records = _drop_missing(records, path)
    return _by_split(records, splits, path, split_seed)


# ---------------------------------------------------------------------------------------------- JSONL / CSV


def _resolve_image(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).absolute()


def load_jsonl(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """One JSON object per line: ``{"image", "caption" | "captions", "split"?, "image_id"?}``."""
    path = Path(path)
    base = _base_folder(path, images)
    rows = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
            raise DatasetError(f"{path}:{n}: each line needs an \"image\" path")
        caps = obj.get("captions", obj.get("caption"))
        caps = [caps] if isinstance(caps, str) else caps
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DatasetError(f"{path}:{n}: needs a \"caption\" string or a \"captions\" list of strings")
        split = _split_name(obj["split"], f"{path}:{n}") if obj.get("split") is not None else None
        image_id = str(obj.get("image_id", obj["image"]))
        rows += [(image_id, _resolve_image(obj["image"], base), c, split) for c in caps]
    return _finish_rows(rows, path, split_seed)


def load_csv(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """A CSV (or TSV) with a header holding ``image`` and ``caption`` columns, ``split`` and ``image_id`` optional."""
    path = Path(path)
    base = _base_folder(path, images)
    lines = _read_lines(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        header = [h.strip().lower() for h in next(reader, [])]
        if "image" not in header or "caption" not in header:
            raise DatasetError(f"{path}:1: the header needs 'image' and 'caption' columns, has {', '.join(header) or 'none'}")
        col = {name: header.index(name) for name in ("image", "caption", "split", "image_id") if name in header}
        rows = []
        for fields in reader:
            n = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DatasetError(f"{path}:{n}: {len(fields)} fields, the header has {len(header)}")
            image = fields[col["image"]].strip()
            if not image:
                raise DatasetError(f"{path}:{n}: empty image path")
            split_value = fields[col["split"]].strip() if "split" in col else ""
            split = _split_name(split_value, f"{path}:{n}") if split_value else None
            image_id = fields[col["image_id"]].strip() if "image_id" in col else image
            rows.append((image_id or image, _resolve_image(image, base), fields[col["caption"]], split))
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return _finish_rows(rows, path, split_seed)


def _base_folder(path: Path, images: Optional[Source]) -> Path:
    if images is None:
        return path.parent
    folder = Path(images).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such image folder")
    return folder


def _finish_rows(rows: list, path: Path, split_seed: int) -> Splits:
    if not rows:
        raise DatasetError(f"{path}: no captions in this file")
    records, splits = _merge(rows, path)
    if not records:
        raise DatasetError(f"{path}: no non-empty captions in this file")
    return _by_split(_drop_missing(records, path), splits, path, split_seed)


# ---------------------------------------------------------------------------------------------- entry point


def detect_format(source: Source) -> str:
    """"coco-folder", "coco", "karpathy", "flickr", "jsonl" or "csv" for ``source``; DatasetError otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_dir():
        if _coco_folder_files(path):
            return "coco-folder"
        raise DatasetError(f"{path}: no annotations/captions_{{train,val,test}}.json in this folder; "
                           "pass a captions file instead")
    name, suffix = path.name.lower(), path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json":
        return "json"  # COCO or Karpathy: told apart by content
    if ".token" in name or suffix == ".token":
        return "flickr"
    lines = _read_lines(path)[:1]
    if lines and re.match(r"[^\t#]+#\d+\t", lines[0]):
        return "flickr"
    raise DatasetError(f"{path}: unrecognised dataset format (expected a COCO/Karpathy .json, a Flickr "
                       ".token.txt, a .jsonl or a .csv file, or a COCO-like folder)")


def load_dataset(source: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """``{"train": [...], "val": [...], "test": [...]}`` of :class:`CaptionedImage` from any supported source
    (see the module docstring); ``images`` is the image folder for sources that need one."""
    path = Path(source).expanduser()
    kind = detect_format(path)
    if kind == "coco-folder":
        return load_coco_folder(path, images, split_seed)
    if kind == "jsonl":
        return load_jsonl(path, images, split_seed)
    if kind == "csv":
        return load_csv(path, images, split_seed)
    if kind == "flickr":
        return load_flickr(path, images, split_seed)
    data = _read_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return _coco_file_splits(data, path, images, split_seed)
    if isinstance(data, dict) and isinstance(data.get("images"), list) and \
            all(isinstance(e, dict) and "sentences" in e for e in data["images"][:10]):
        return load_karpathy(path, images, split_seed)
    raise DatasetError(f"{path}: neither a COCO captions file ('images' + 'annotations') nor a Karpathy split "
                       "file ('images' with 'sentences')")


def describe(splits: Splits) -> str:
    """One line: images and captions per split."""
    parts = [f"{name} {len(records)} images / {sum(len(r.captions) for r in records)} captions"
             for name, records in splits.items()]
    return ", ".join(parts)
