"""The built-in synthetic captioning dataset: simple scenes of one or two shapes, five captions each.

Every image is a plain background with one shape (placed clearly on the left, in the middle or on
the right) or two shapes side by side (the left one is always mentioned first). Each image has five
reference captions, one from each of five templates of its kind, so that the references vary in
wording the way COCO's five do, while a model that says any one of them with the right content
matches a reference exactly. Every fact a caption states is plainly visible at 64 px: shapes never
overlap or touch the border, "large" shapes are 1.5-2x the side of "small" ones, and the background
colours are never shape colours.

The output is an ordinary COCO-format folder that :func:`capkit.training.datasets.load_dataset`
reads like any other::

    out_dir/images/000000.png ...
    out_dir/annotations/captions_{train,val,test}.json
    out_dir/meta.json          # the generator's parameters; written last, marks the folder complete

Generation is a pure function of its arguments: each image draws from its own
``numpy.random.default_rng`` child of ``SeedSequence(seed)``, so the same arguments give the same
bytes, and image i does not depend on ``count``.

This module also holds what every synthetic family shares (:class:`Family`: the folder writing,
splits, completion marker and clean-up); this demo set is the family "shapes", and
:mod:`capkit.training.synthetic_objects` is a second one ("objects") for checking that a training
recipe tuned here also works on data it was not tuned on.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from capkit.runtime.errors import CapkitError

SYNTHETIC_VERSION = 2  # bump when the images or captions change, so that cached copies are regenerated
META_FILE = "meta.json"
SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5
DEFAULT_COUNT = 4800  # the default set: at 4,800 images the default model ends with train loss = validation loss
DEFAULT_IMAGE_SIZE = 64  # pixels a side: shapes and colours read clearly, and a ResNet-18 step stays cheap on a CPU

# Shape colours and background colours are disjoint sets of words and of clearly different RGB values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 175, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 220, 40),
    "purple": (135, 45, 190),
    "orange": (250, 135, 20),
    "pink": (250, 140, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star")  # clearly different outlines even at 14 px
SIZES: dict[str, tuple[float, float]] = {"small": (0.22, 0.26), "large": (0.40, 0.44)}  # bounding box / image side
POSITIONS: dict[str, float] = {"left": 0.25, "middle": 0.50, "right": 0.75}  # centre x / image side
POSITION_WORDS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
JITTER = 0.035  # centre x moves at most this fraction of the side around its nominal position
MARGIN = 0.04  # shapes keep at least this fraction of the side from the border and from each other
SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: smooth edges
COLOUR_JITTER = 8  # per-channel +- jitter of every colour, so that colours are not single RGB values

# Five templates per kind of scene; {s} size, {c} colour, {h} shape, {b} background, {p} position phrase.
# Punctuation is dropped by the tokenizer; {a} is "a"/"an" for the word after it.
SINGLE_TEMPLATES = (
    "a {s} {c} {h} on a {b} background",
    "there is a {s} {c} {h} {p}",
    "a {b} picture with a {s} {c} {h} {p}",
    "one shape, a {s} {c} {h} {p}",
    "{a} {c} {h}, {s}, on {b}",
)
PAIR_TEMPLATES = (
    "a {s1} {c1} {h1} and a {s2} {c2} {h2} on a {b} background",
    "there is a {s1} {c1} {h1} and a {s2} {c2} {h2}",
    "a {b} picture with a {s1} {c1} {h1} and a {s2} {c2} {h2}",
    "two shapes, a {s1} {c1} {h1} on the left and a {s2} {c2} {h2} on the right",
    "{a1} {c1} {h1}, {s1}, and {a2} {c2} {h2}, {s2}, on {b}",
)


class SyntheticError(CapkitError):
    """Bad generation parameters, or an output folder that cannot be written; one line."""


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    colour: str  # a key of COLOURS
    size: str  # a key of SIZES
    cx: float  # centre, pixels
    cy: float
    side: float  # bounding box side, pixels


@dataclass(frozen=True)
class Scene:
    background: str  # a key of BACKGROUNDS
    shapes: tuple[Shape, ...]  # one, or two ordered left to right
    position: str | None  # key of POSITIONS for a single shape; None for two


def article(word: str) -> str:
    """The indefinite article for ``word`` (shared by every family's captions)."""
    return "an" if word[0] in "aeiou" else "a"


def captions_for(scene: Scene) -> list[str]:
    """The five reference captions of a scene, in template order."""
    if len(scene.shapes) == 1:
        (sh,) = scene.shapes
        values = {"s": sh.size, "c": sh.colour, "h": sh.kind, "b": scene.background,
                  "p": POSITION_WORDS[scene.position or "middle"], "a": article(sh.colour)}
        return [t.format(**values) for t in SINGLE_TEMPLATES]
    left, right = scene.shapes
    values = {"s1": left.size, "c1": left.colour, "h1": left.kind, "a1": article(left.colour),
              "s2": right.size, "c2": right.colour, "h2": right.kind, "a2": article(right.colour),
              "b": scene.background}
    return [t.format(**values) for t in PAIR_TEMPLATES]


def _shape_side(rng: np.random.Generator, size: str, image_size: int) -> float:
    lo, hi = SIZES[size]
    return float(rng.uniform(lo, hi)) * image_size


def sample_scene(rng: np.random.Generator, image_size: int) -> Scene:
    """One random scene: half the scenes have one shape, half two side by side of different colours."""
    n = image_size
    margin = MARGIN * n
    background = str(rng.choice(list(BACKGROUNDS)))
    if rng.random() < 0.5:
        kind, colour, size = str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), str(rng.choice(list(SIZES)))
        position = str(rng.choice(list(POSITIONS)))
        side = _shape_side(rng, size, n)
        half = side / 2
        cx = POSITIONS[position] * n + rng.uniform(-JITTER, JITTER) * n
        cx = min(max(cx, half + margin), n - half - margin)
        cy = n / 2 + rng.uniform(-0.12, 0.12) * n
        cy = min(max(cy, half + margin), n - half - margin)
        return Scene(background, (Shape(kind, colour, size, cx, cy, side),), position)
    colours = rng.choice(list(COLOURS), size=2, replace=False)
    shapes = []
    for i, colour in enumerate(colours):
        kind, size = str(rng.choice(SHAPES)), str(rng.choice(list(SIZES)))
        side = _shape_side(rng, size, n)
        half = side / 2
        lo, hi = (half + margin, n / 2 - half - margin / 2) if i == 0 else (n / 2 + half + margin / 2, n - half - margin)
        centre = (0.25 if i == 0 else 0.75) * n + rng.uniform(-JITTER, JITTER) * n
        cx = min(max(centre, lo), hi) if lo <= hi else (lo + hi) / 2
        cy = float(rng.uniform(half + margin, n - half - margin))
        shapes.append(Shape(kind, str(colour), size, cx, cy, side))
    return Scene(background, tuple(shapes), None)


def _polygon(kind: str, cx: float, cy: float, side: float) -> list[tuple[float, float]]:
    r = side / 2
    if kind == "triangle":  # pointing up, filling the bounding box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if kind == "star":  # five points; the inner radius keeps the arms thick enough to see at 64 px
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.5
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + r * 0.1))
        return points
    raise ValueError(f"no polygon for {kind!r}")


def jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    """``rgb`` moved by up to COLOUR_JITTER per channel, so that a colour word is not one RGB value."""
    delta = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + delta, 0, 255))


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """The scene as an RGB image, drawn at SUPERSAMPLE x and downsampled (anti-aliased edges)."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (image_size * k, image_size * k), jittered(BACKGROUNDS[scene.background], rng))
    draw = ImageDraw.Draw(img)
    for sh in scene.shapes:
        fill = jittered(COLOURS[sh.colour], rng)
        cx, cy, side = sh.cx * k, sh.cy * k, sh.side * k
        r = side / 2
        if sh.kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif sh.kind == "square":
            s = r * 0.9  # a square looks bigger than a circle of the same box
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        else:
            draw.polygon(_polygon(sh.kind, cx, cy, side), fill=fill)
    return img.resize((image_size, image_size), Image.Resampling.BOX)


def _scene_record(scene: Scene) -> dict[str, Any]:
    return {"background": scene.background, "position": scene.position,
            "shapes": [{"kind": s.kind, "colour": s.colour, "size": s.size,
                        "box": [round(s.cx - s.side / 2, 2), round(s.cy - s.side / 2, 2), round(s.side, 2)]}
                       for s in scene.shapes]}


def _draw_shapes(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, list[str], dict[str, Any]]:
    """One demo image: (image, its five captions in template order, its scene record)."""
    scene = sample_scene(rng, image_size)
    return render_scene(scene, image_size, rng), captions_for(scene), _scene_record(scene)


# ------------------------------------------------------------------------ the writer all families share

DEFAULT_SPLITS = (0.8, 0.1, 0.1)
_IMAGE_FILE = re.compile(r"\d{6,}\.[a-z]{3,4}")  # a generated image of any family: the stale-file cleanup


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


def _check(count: int, seed: int, image_size: int, splits: Sequence[float]) -> None:
    if int(count) != count or count < 1:
        raise SyntheticError(f"count must be a positive integer, got {count}")
    if int(seed) != seed or seed < 0:
        raise SyntheticError(f"seed must be an integer >= 0, got {seed}")
    if int(image_size) != image_size or image_size < 32:
        raise SyntheticError(f"image size must be an integer >= 32, got {image_size}")
    if len(splits) != 3 or any(s < 0 for s in splits) or abs(sum(splits) - 1.0) > 1e-6:
        raise SyntheticError(f"splits must be three fractions (train, val, test) summing to 1, got {tuple(splits)}")


def annotations_file(folder: str | os.PathLike, split: str) -> Path:
    """Where a family's folder keeps a split's COCO captions file (the scenes ride in its ``images``)."""
    return Path(folder) / "annotations" / f"captions_{split}.json"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    draw: Draw
    extension: str  # image file suffix, without the dot
    save_options: dict[str, Any]  # Pillow's save() keywords, format included
    default_count: int
    default_image_size: int
    templates: dict[str, tuple[str, ...]]  # recorded in meta.json: which wordings the captions come from
    cache_tag: str  # cache folder tag (training.data.synthetic_dir); "" keeps the demo's old folder names

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
        """
        count = self.default_count if count is None else count
        image_size = self.default_image_size if image_size is None else image_size
        _check(count, seed, image_size, splits)
        out = Path(out_dir)
        if self.is_complete(out, count, seed, image_size, splits):
            return out
        image_dir, ann_dir = out / "images", annotations_file(out, SPLITS[0]).parent
        try:
            (out / META_FILE).unlink(missing_ok=True)
            image_dir.mkdir(parents=True, exist_ok=True)
            ann_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SyntheticError(f"{out}: cannot write the synthetic dataset there ({e.strerror or e})") from None

        width = max(6, len(str(count - 1)))
        children = np.random.SeedSequence(seed).spawn(count)
        images, annotations = [], []
        from tqdm import tqdm  # here: `capkit caption` imports this module's constants and starts faster without it

        for i in tqdm(range(count), desc=f"synthetic {self.name}", unit="img", disable=not progress, leave=False):
            rng = np.random.default_rng(children[i])
            image, captions, record = self.draw(rng, image_size)
            name = f"{i:0{width}d}.{self.extension}"
            image.save(image_dir / name, **self.save_options)
            order = rng.permutation(len(captions))  # references in no fixed template order, as in COCO
            images.append({"id": i, "file_name": name, "width": image_size, "height": image_size, "scene": record})
            annotations.append([captions[j] for j in order])

        # Files of an earlier, larger (or other family's) generation in the same folder would only confuse a reader.
        keep = {im["file_name"] for im in images}
        for stale in image_dir.iterdir():
            if _IMAGE_FILE.fullmatch(stale.name) and stale.name not in keep:
                stale.unlink()

        sizes = split_sizes(count, splits)
        order = np.random.default_rng(seed).permutation(count)
        bounds = np.cumsum((0,) + sizes)
        info = {"description": self.description, "version": self.version, "seed": seed, "count": count,
                "image_size": image_size}
        ann_id = 0
        for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
            members = sorted(int(i) for i in order[lo:hi])
            anns = []
            for i in members:
                for caption in annotations[i]:
                    anns.append({"id": ann_id, "image_id": i, "caption": caption})
                    ann_id += 1
            coco = {"info": {**info, "split": split}, "images": [images[i] for i in members], "annotations": anns,
                    "licenses": []}
            _write_text(annotations_file(out, split), json.dumps(coco, indent=1) + "\n")

        meta = {"params": self.params(count, seed, image_size, splits), "splits": dict(zip(SPLITS, sizes)),
                "captions_per_image": CAPTIONS_PER_IMAGE, "templates": {k: list(v) for k, v in self.templates.items()},
                "files": [im["file_name"] for im in images]}
        _write_text(out / META_FILE, json.dumps(meta, indent=1) + "\n")
        return out


SHAPES_FAMILY = Family(
    name="shapes", generator="capkit.training.synthetic", version=SYNTHETIC_VERSION,
    description="capkit synthetic shapes captioning dataset", draw=_draw_shapes, extension="png",
    save_options={"format": "PNG", "compress_level": 6}, default_count=DEFAULT_COUNT,
    default_image_size=DEFAULT_IMAGE_SIZE, templates={"one shape": SINGLE_TEMPLATES, "two shapes": PAIR_TEMPLATES},
    cache_tag="")


def families() -> dict[str, Family]:
    """Every synthetic family by its CLI name, the demo's first."""
    from capkit.training.synthetic_objects import OBJECTS_FAMILY  # here: that module builds on this one

    return {f.name: f for f in (SHAPES_FAMILY, OBJECTS_FAMILY)}


def is_complete(out_dir: str | os.PathLike, count: int = DEFAULT_COUNT, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                splits: Sequence[float] = DEFAULT_SPLITS) -> bool:
    """True when ``out_dir`` holds a finished demo dataset generated with exactly these parameters."""
    return SHAPES_FAMILY.is_complete(out_dir, count, seed, image_size, splits)


def generate_synthetic(out_dir: str | os.PathLike, count: int = DEFAULT_COUNT, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                       splits: Sequence[float] = DEFAULT_SPLITS, progress: bool = True) -> Path:
    """Writes the demo dataset into ``out_dir`` (see the module docstring) and returns its path; see
    :meth:`Family.generate`."""
    return SHAPES_FAMILY.generate(out_dir, count, seed, image_size, splits, progress)
