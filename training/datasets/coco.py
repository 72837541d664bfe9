"""The JSON dataset formats: COCO captions files (one file, or a folder of per-split files beside
their image folders) and Karpathy split files (``dataset_coco.json``, ``dataset_flickr8k.json`` ...).
Formats and image-folder rules: :mod:`capkit.training.datasets`."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from capkit.training.datasets.records import (SPLITS, CaptionedImage, DatasetError, ImageId, Source, Splits, by_split,
                                              check_id, drop_missing, halve, image_folder, image_folder_beside, merge,
                                              random_split, read_json, shown, split_name)

_COCO_FILE = re.compile(r"captions_(train|val|test)(\d{4})?\.json")


def _coco_records(data: Any, path: Path, images: Optional[Source], guesses: Sequence[Path]) -> list[CaptionedImage]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DatasetError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    files = _coco_files(data["images"], path)
    captions: dict[ImageId, list[str]] = {i: [] for i in files}
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise DatasetError(f"{path}: annotations[{k}] needs an 'image_id' and a 'caption'")
        image_id = check_id(ann["image_id"], f"{path}: annotations[{k}]")
        if image_id not in captions:
            raise DatasetError(f"{path}: annotations[{k}] refers to image id {shown(image_id)}, not in 'images'")
        if ann["caption"].strip():
            captions[image_id].append(ann["caption"].strip())
    folder = image_folder(images, guesses, list(files.values()), path)
    return [CaptionedImage((folder / files[i]).absolute(), tuple(c), str(i)) for i, c in captions.items() if c]


def _coco_files(images: list, path: Path) -> dict[ImageId, str]:
    """{image id: file name} of a COCO file's ``images``: each entry an object with an id (an integer or a
    string, all of one kind, each once) and a non-empty file name; DatasetError naming the entry otherwise."""
    files: dict[ImageId, str] = {}
    first: dict[ImageId, int] = {}  # the index of each id's entry, for the message about a repeated one
    for k, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str) \
                or not im["file_name"].strip():
            raise DatasetError(f"{path}: images[{k}] needs an 'id' and a 'file_name'")
        image_id = check_id(im["id"], f"{path}: images[{k}]")
        if files and type(image_id) is not type(next(iter(files))):
            kinds = {int: "an integer", str: "a string"}
            raise DatasetError(f"{path}: images[{k}]: the id {shown(image_id)} is {kinds[type(image_id)]} while "
                               f"images[0]'s is {kinds[type(next(iter(files)))]}; a file's ids are all of one kind")
        if image_id in files:
            raise DatasetError(f"{path}: images[{k}]: the id {shown(image_id)} is also images[{first[image_id]}]'s")
        files[image_id], first[image_id] = im["file_name"], k
    return files


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
    return coco_file_splits(read_json(path), path, images, split_seed)


def coco_file_splits(data: Any, path: Path, images: Optional[Source], split_seed: int) -> Splits:
    """The splits of a COCO captions file already read (``data``) from ``path``."""
    records = drop_missing(_coco_records(data, path, images, _coco_guesses(path, None)), path)
    return random_split(records, split_seed)


def coco_folder_files(folder: Path) -> dict[str, Path]:
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
    files = coco_folder_files(folder)
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
        data = read_json(path)
        # images= is a root holding per-split folders, or the folder of all images.
        splits[split] = drop_missing(_coco_records(data, path, None, guesses), path)
    if "test" not in files:
        if "val" in files:
            splits["val"], splits["test"] = halve(splits["val"], split_seed)
        else:
            splits = random_split(splits["train"], split_seed)
    return splits


def load_karpathy(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """A Karpathy split file: ``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}``."""
    path = Path(path)
    data = read_json(path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: not a Karpathy split file (needs an 'images' list)")
    rows = []
    for k, e in enumerate(entries):
        where = f"{path}: images[{k}]"
        if not isinstance(e, dict) or not isinstance(e.get("filename"), str) or not e["filename"].strip() \
                or not isinstance(e.get("sentences"), list):
            raise DatasetError(f"{where} needs a 'filename' and a 'sentences' list")
        if not isinstance(e.get("filepath") or "", str):
            raise DatasetError(f"{where}: 'filepath' must be a string, got {shown(e['filepath'])}")
        rel = str(Path(e.get("filepath") or "") / e["filename"])
        split = split_name(e.get("split", ""), where)
        image_id = str(check_id(e["cocoid"], where)) if "cocoid" in e else rel
        for s in e["sentences"]:
            raw = s.get("raw") if isinstance(s, dict) else None
            tokens = s.get("tokens") if isinstance(s, dict) else None
            if raw is None and isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                raw = " ".join(tokens)
            if not isinstance(raw, str):
                raise DatasetError(f"{where} has a sentence without 'raw' text")
            rows.append((image_id, rel, raw, split))
    if not rows:
        raise DatasetError(f"{path}: no captions in this file")
    folder = image_folder_beside(path, images, [r[1] for r in rows])
    records, splits = merge(((i, (folder / rel).absolute(), c, s) for i, rel, c, s in rows), path)
    records = drop_missing(records, path)
    return by_split(records, splits, path, split_seed)


__all__ = ["coco_file_splits", "coco_folder_files", "load_coco_file", "load_coco_folder", "load_karpathy"]
