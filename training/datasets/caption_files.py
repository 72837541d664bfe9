"""The line-oriented dataset formats: a Flickr8k/30k token file (with its split lists beside it),
JSONL (one image's caption or captions a line) and CSV/TSV (one caption a row). Several lines of one
image merge into one record. Formats and image-folder rules: :mod:`capkit.training.datasets`."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from capkit.training.datasets.records import (JSON_ERRORS, DatasetError, Row, Source, Splits, by_split, check_id,
                                              drop_missing, image_folder_beside, json_problem, merge, read_lines,
                                              split_name, user_path)


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
    for n, line in enumerate(read_lines(path), start=1):
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
        for name in read_lines(f):
            if name.strip():
                membership[name.strip()] = split
    folder = image_folder_beside(path, images, [r[0] for r in rows])
    if split_files:
        rows = [r for r in rows if r[0] in membership]
        if not rows:
            raise DatasetError(f"{path}: none of its images is listed in {', '.join(p.name for p in split_files.values())}")
    records, splits = merge(((name, (folder / name).absolute(), c, membership.get(name)) for name, c in rows), path)
    records = drop_missing(records, path)
    return by_split(records, splits, path, split_seed)


def _resolve_image(value: str, base: Path, where: str) -> Path:
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~someone/a.jpg" for a user this system does not know
        raise DatasetError(f"{where}: cannot expand the image path's '~' (no such user)") from None
    return (p if p.is_absolute() else base / p).absolute()


def load_jsonl(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """One JSON object per line: ``{"image", "caption" | "captions", "split"?, "image_id"?}``."""
    path = Path(path)
    base = _base_folder(path, images)
    rows = []
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except JSON_ERRORS as e:
            raise DatasetError(f"{path}:{n}: not valid JSON ({json_problem(e)})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"].strip():
            raise DatasetError(f"{path}:{n}: each line needs an \"image\" path")
        caps = obj.get("captions", obj.get("caption"))
        caps = [caps] if isinstance(caps, str) else caps
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DatasetError(f"{path}:{n}: needs a \"caption\" string or a \"captions\" list of strings")
        split = split_name(obj["split"], f"{path}:{n}") if obj.get("split") is not None else None
        given_id = obj.get("image_id")  # null or absent: the image path is the id
        image_id = str(check_id(given_id, f"{path}:{n}")) if given_id is not None else obj["image"]
        rows += [(image_id, _resolve_image(obj["image"], base, f"{path}:{n}"), c, split) for c in caps]
    return _finish_rows(rows, path, split_seed)


def load_csv(path: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """A CSV (or TSV) with a header holding ``image`` and ``caption`` columns, ``split`` and ``image_id`` optional."""
    path = Path(path)
    base = _base_folder(path, images)
    lines = read_lines(path)
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
            split = split_name(split_value, f"{path}:{n}") if split_value else None
            image_id = fields[col["image_id"]].strip() if "image_id" in col else image
            rows.append((image_id or image, _resolve_image(image, base, f"{path}:{n}"), fields[col["caption"]], split))
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return _finish_rows(rows, path, split_seed)


def _base_folder(path: Path, images: Optional[Source]) -> Path:
    if images is None:
        return path.parent
    folder = user_path(images)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such image folder")
    return folder


def _finish_rows(rows: list[Row], path: Path, split_seed: int) -> Splits:
    if not rows:
        raise DatasetError(f"{path}: no captions in this file")
    records, splits = merge(rows, path)
    if not records:
        raise DatasetError(f"{path}: no non-empty captions in this file")
    return by_split(drop_missing(records, path), splits, path, split_seed)


__all__ = ["load_csv", "load_flickr", "load_jsonl"]
