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

Rooms: :mod:`.records` (the records, the errors and the functions every reader shares), :mod:`.coco`
(COCO and Karpathy JSON), :mod:`.caption_files` (Flickr token files, JSONL, CSV); this module
detects the format and hands the source to its reader.
"""


from __future__ import annotations

import re
from typing import Optional

from capkit.runtime.errors import printable
from capkit.training.datasets.caption_files import load_csv, load_flickr, load_jsonl
from capkit.training.datasets.coco import (coco_file_splits, coco_folder_files, load_coco_file, load_coco_folder,
                                           load_karpathy)
from capkit.training.datasets.records import (DEFAULT_FRACTIONS, SPLITS, CaptionedImage, DatasetError, Source, Splits,
                                              random_split, read_json, read_lines, user_path)


def detect_format(source: Source) -> str:
    """"coco-folder", "coco", "karpathy", "flickr", "jsonl" or "csv" for ``source``; DatasetError otherwise."""
    path = user_path(source)
    try:
        exists = path.exists()
    except OSError as e:  # a name too long, no permission on a folder above it ...
        raise DatasetError(f"{printable(str(path))}: cannot read ({e.strerror or e})") from None
    if not exists:
        raise DatasetError(f"{printable(str(path))}: no such file or folder")
    if path.is_dir():
        if coco_folder_files(path):
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
    lines = read_lines(path)[:1]
    if lines and re.match(r"[^\t#]+#\d+\t", lines[0]):
        return "flickr"
    raise DatasetError(f"{path}: unrecognised dataset format (expected a COCO/Karpathy .json, a Flickr "
                       ".token.txt, a .jsonl or a .csv file, or a COCO-like folder)")


def load_dataset(source: Source, images: Optional[Source] = None, split_seed: int = 0) -> Splits:
    """``{"train": [...], "val": [...], "test": [...]}`` of :class:`CaptionedImage` from any supported source
    (see the module docstring); ``images`` is the image folder for sources that need one."""
    path = user_path(source)
    kind = detect_format(path)
    if kind == "coco-folder":
        return load_coco_folder(path, images, split_seed)
    if kind == "jsonl":
        return load_jsonl(path, images, split_seed)
    if kind == "csv":
        return load_csv(path, images, split_seed)
    if kind == "flickr":
        return load_flickr(path, images, split_seed)
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return coco_file_splits(data, path, images, split_seed)
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


__all__ = ["DEFAULT_FRACTIONS", "SPLITS", "CaptionedImage", "DatasetError", "Source", "Splits", "describe",
           "detect_format", "load_coco_file", "load_coco_folder", "load_csv", "load_dataset", "load_flickr",
           "load_jsonl", "load_karpathy", "random_split"]
