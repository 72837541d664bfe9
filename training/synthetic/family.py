"""What every synthetic captioning family shares: the folder writer (:class:`Family`), the splits, the
completion marker and the clean-up, and what every family draws and words its captions with (one
table of colour words, their jitter, the article).

A family's output is an ordinary COCO-format folder that :func:`capkit.training.datasets.load_dataset`
reads like any other::

    out_dir/images/000000.png ...
    out_dir/annotations/captions_{train,val,test}.json
    out_dir/meta.json          # the generator's parameters; written last, marks the folder complete

Generation is a pure function of its arguments: each image draws from its own
``numpy.random.default_rng`` child of ``SeedSequence(seed)``, so the same arguments give the same
bytes, and image i does not depend on ``count``. A family only says how to draw one image and its
captions: :mod:`.shapes` (the demo set) and :mod:`.objects` are the two there are.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from capkit.runtime.errors import CapkitError, check_int
from capkit.training.synthetic.facts import FactReader

META_FILE = "meta.json"
SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
COLOUR_JITTER = 8  # per-channel +- jitter of every colour, so that colours are not single RGB values
_IMAGE_FILE = re.compile(r"\d{6,}\.[a-z]{3,4}")  # a generated image of any family: the stale-file cleanup


class SyntheticError(CapkitError):
    """Bad generation parameters, or an output folder that cannot be written; one line."""


# ------------------------------------------------------------------------ colours, jitter and articles

# Every colour word a family draws, with its RGB: one table, so that a word names one colour in every
# family. Each family picks its own words (:func:`palette`); the families share none.
NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    # the demo's shape colours
    "red": (220, 30, 30), "green": (40, 175, 60), "blue": (40, 80, 235), "yellow": (245, 220, 40),
    "purple": (135, 45, 190), "orange": (250, 135, 20), "pink": (250, 140, 200),
    # the demo's backgrounds
    "black": (15, 15, 15), "gray": (128, 128, 128), "white": (245, 245, 245),
    # the objects family's colours
    "navy": (30, 40, 140), "lime": (150, 225, 40), "magenta": (215, 30, 185), "gold": (230, 175, 20),
    "brown": (125, 70, 30), "cyan": (30, 200, 225),
}


def palette(*names: str) -> dict[str, tuple[int, int, int]]:
    """The colour words ``names`` with their RGB, in that order (the order a family samples them in)."""
    return {name: NAMED_COLOURS[name] for name in names}


def jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """``rgb`` moved by up to COLOUR_JITTER per channel, so that a colour word is not one RGB value."""
    delta = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + delta, 0, 255))


def article(word: str) -> str:
    """The indefinite article for ``word`` (shared by every family's captions)."""
    return "an" if word[0] in "aeiou" else "a"


# ------------------------------------------------------------------------ the writer all families share


def split_sizes(count: int, splits: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) image counts summing to ``count``; val and test get at least one image when
    their fraction is positive and ``count`` allows it."""
    n_val = int(round(count * splits[1]))
    n_test = int(round(count * splits[2]))
    if count >= 3:
        n_val = max(n_val, 1 if splits[1] > 0 else 0)
        n_test = max(n_test, 1 if splits[2] > 0 else 0)
    n_val, n_test = min(n_val, count), min(n_test, max(count - n_val, 0))
    return count - n_val - n_test, n_val, n_test


def _checked(count: int, seed: int, image_size: int, splits: Sequence[float]) -> tuple[int, int, int]:
    """(count, seed, image size) as Python ints, each checked; SyntheticError naming the first bad one."""
    checked = (check_int(count, "count", 1, error=SyntheticError), check_int(seed, "seed", 0, error=SyntheticError),
               check_int(image_size, "image size", 32, error=SyntheticError))
    if len(splits) != 3 or any(s < 0 for s in splits) or abs(sum(splits) - 1.0) > 1e-6:
        raise SyntheticError(f"splits must be three fractions (train, val, test) summing to 1, got {tuple(splits)}")
    return checked


def annotations_file(folder: str | os.PathLike, split: str) -> Path:
    """Where a family's folder keeps a split's COCO captions file (the scenes ride in its ``images``)."""
    return Path(folder) / "annotations" / f"captions_{split}.json"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _start_folder(out: Path) -> Path:
    """The images folder of ``out``, made with the annotations folder, once the completion marker is gone."""
    image_dir = out / "images"
    try:
        (out / META_FILE).unlink(missing_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        annotations_file(out, SPLITS[0]).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SyntheticError(f"{out}: cannot write the synthetic dataset there ({e.strerror or e})") from None
    return image_dir


def _remove_stale(image_dir: Path, keep: set[str]) -> None:
    """Deletes the images of an earlier, larger (or other family's) generation in the same folder:
    they would only confuse a reader."""
    for stale in image_dir.iterdir():
        if _IMAGE_FILE.fullmatch(stale.name) and stale.name not in keep:
            stale.unlink()


def _write_splits(out: Path, images: list[dict[str, Any]], captions: list[list[str]], sizes: Sequence[int],
                  seed: int, info: dict[str, Any]) -> None:
    """One COCO captions file a split: a seeded shuffle of the images cut by ``sizes``, each split's
    images in id order, annotation ids counting on across the splits."""
    order = np.random.default_rng(seed).permutation(len(images))
    bounds = np.cumsum((0,) + tuple(sizes))
    ann_id = 0
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        members = sorted(int(i) for i in order[lo:hi])
        anns = []
        for i in members:
            for caption in captions[i]:
                anns.append({"id": ann_id, "image_id": i, "caption": caption})
                ann_id += 1
        coco = {"info": {**info, "split": split}, "images": [images[i] for i in members], "annotations": anns,
                "licenses": []}
        _write_text(annotations_file(out, split), json.dumps(coco, indent=1) + "\n")


# (image, captions, scene record) of one image, drawn from that image's own generator at a given side.
Draw = Callable[[np.random.Generator, int], tuple[Image.Image, list[str], dict[str, Any]]]


@dataclass(frozen=True)
class Family:
    """One kind of synthetic dataset. The folder layout, the splits, the completion marker and the
    clean-up are the same for every family; a family only says how to draw one image and its captions."""

    name: str  # `capkit data synthetic --family NAME`
    generator: str  # meta.json's params["generator"]: what a reader checks to recognise the family
    version: int  # bump when the images or captions change, so that cached copies are regenerated
    description: str  # the COCO files' info.description
    draw: Draw  # one image, its captions and its scene record, from the image's own generator
    extension: str  # image file suffix, without the dot
    save_options: dict[str, Any]  # Pillow's save() keywords, format included
    default_count: int  # images when the caller names no count
    default_image_size: int  # pixels a side when the caller names no size
    templates: dict[str, tuple[str, ...]]  # recorded in meta.json: which wordings the captions come from
    cache_tag: str  # cache folder tag (training.data.synthetic_dir); "" keeps the demo's old folder names
    facts: Optional[FactReader] = None  # reads the facts of a caption and of a scene record (fact accuracy)
    train_size: Optional[int] = None  # the input side `capkit train` uses on this family's folders unless told
    # (--image-size): the side at which every fact stays plain, so a run spends no time on larger maps; None: the
    # images' own side. Images are used whole (no crop margin): objects near the border stay in.

    def input_size(self, image_size: int) -> int:
        """The side a run trains at on this family's images of ``image_size`` pixels (never larger than they are)."""
        return min(self.train_size or image_size, image_size)

    def params(self, count: int, seed: int, image_size: int, splits: Sequence[float]) -> dict[str, Any]:
        return {"generator": self.generator, "version": self.version, "count": count, "seed": seed,
                "image_size": image_size, "splits": [float(s) for s in splits]}

    def is_complete(self, out_dir: str | os.PathLike, count: int | None = None, seed: int = 0,
                    image_size: int | None = None, splits: Sequence[float] = DEFAULT_SPLITS) -> bool:
        """True when ``out_dir`` holds a finished dataset of this family generated with exactly these parameters."""
        count = self.default_count if count is None else count
        image_size = self.default_image_size if image_size is None else image_size
        out = Path(out_dir)
        try:
            meta = json.loads((out / META_FILE).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(meta, dict) or meta.get("params") != self.params(count, seed, image_size, splits):
            return False
        names = sorted(meta.get("files", []))
        if len(names) != count:
            return False
        if not all(annotations_file(out, s).is_file() for s in SPLITS):
            return False
        return all((out / "images" / name).is_file() for name in names)

    def generate(self, out_dir: str | os.PathLike, count: int | None = None, seed: int = 0,
                 image_size: int | None = None, splits: Sequence[float] = DEFAULT_SPLITS,
                 progress: bool = True) -> Path:
        """Writes the dataset into ``out_dir`` (layout: the module docstring) and returns its path.

        Does nothing when ``out_dir`` already holds a complete dataset with the same parameters.
        ``meta.json`` is removed first and written last, so an interrupted run is never taken as complete.
        ``progress``: show a progress bar.
        """
        count = self.default_count if count is None else count
        image_size = self.default_image_size if image_size is None else image_size
        count, seed, image_size = _checked(count, seed, image_size, splits)
        out = Path(out_dir)
        if self.is_complete(out, count, seed, image_size, splits):
            return out
        image_dir = _start_folder(out)
        images, captions = self._draw_images(image_dir, count, seed, image_size, progress)
        _remove_stale(image_dir, {im["file_name"] for im in images})
        sizes = split_sizes(count, splits)
        info = {"description": self.description, "version": self.version, "seed": seed, "count": count,
                "image_size": image_size}
        _write_splits(out, images, captions, sizes, seed, info)
        meta = {"params": self.params(count, seed, image_size, splits), "splits": dict(zip(SPLITS, sizes)),
                "captions_per_image": CAPTIONS_PER_IMAGE, "templates": {k: list(v) for k, v in self.templates.items()},
                "files": [im["file_name"] for im in images]}
        _write_text(out / META_FILE, json.dumps(meta, indent=1) + "\n")
        return out

    def _draw_images(self, image_dir: Path, count: int, seed: int, image_size: int,
                     progress: bool) -> tuple[list[dict[str, Any]], list[list[str]]]:
        """Draws and saves every image: (the COCO ``images`` entries, each image's captions in the order
        they are written), both indexed by image id."""
        width = max(6, len(str(count - 1)))
        children = np.random.SeedSequence(seed).spawn(count)
        images, captions = [], []
        from tqdm import tqdm  # here: `capkit caption` imports this package's constants and starts faster without it

        for i in tqdm(range(count), desc=f"synthetic {self.name}", unit="img", disable=not progress, leave=False):
            rng = np.random.default_rng(children[i])
            image, drawn, record = self.draw(rng, image_size)
            name = f"{i:0{width}d}.{self.extension}"
            image.save(image_dir / name, **self.save_options)
            order = rng.permutation(len(drawn))  # references in no fixed template order, as in COCO
            images.append({"id": i, "file_name": name, "width": image_size, "height": image_size, "scene": record})
            captions.append([drawn[j] for j in order])
        return images, captions
