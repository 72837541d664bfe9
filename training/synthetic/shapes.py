"""The demo synthetic family, "shapes": simple scenes of one or two shapes, five captions each.

Every image is a plain background with one shape (placed clearly on the left, in the middle or on
the right) or two shapes side by side (the left one is always mentioned first). Each image has five
reference captions, one from each of five templates of its kind, so that the references vary in
wording the way COCO's five do, while a model that says any one of them with the right content
matches a reference exactly. Every fact a caption states is plainly visible at 64 px: shapes never
overlap or touch the border, "large" shapes are 1.5-2x the side of "small" ones, and the background
colours are never shape colours.

The folder, splits and completion marker are the shared ones of :class:`.family.Family`;
:func:`generate_synthetic` writes this set (the one ``capkit train`` uses without ``--data``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from capkit.runtime.vocab import tokenize
from capkit.training.synthetic.facts import FactReader, Facts, parse_objects
from capkit.training.synthetic.family import DEFAULT_SPLITS, Family, article, jittered, palette

SYNTHETIC_VERSION = 2  # bump when the images or captions change, so that cached copies are regenerated
DEFAULT_COUNT = 4800  # the default set: at 4,800 images the default model ends with train loss = validation loss
DEFAULT_IMAGE_SIZE = 64  # pixels a side: shapes and colours read clearly, and a ResNet-18 step stays cheap on a CPU

# Shape colours and background colours are disjoint sets of words and of clearly different RGB values.
COLOURS = palette("red", "green", "blue", "yellow", "purple", "orange", "pink")
BACKGROUNDS = palette("black", "gray", "white")
SHAPES = ("circle", "square", "triangle", "star")  # clearly different outlines even at 14 px
SIZES: dict[str, tuple[float, float]] = {"small": (0.22, 0.26), "large": (0.40, 0.44)}  # bounding box / image side
POSITIONS: dict[str, float] = {"left": 0.25, "middle": 0.50, "right": 0.75}  # centre x / image side
POSITION_WORDS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
JITTER = 0.035  # centre x moves at most this fraction of the side around its nominal position
MARGIN = 0.04  # shapes keep at least this fraction of the side from the border and from each other
SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: smooth edges

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


# -- fact accuracy: an object is (size, colour, shape); the scene-wide facts are the background and, for one
# shape, its position. In "{a} {c} {h}, {s}," the size follows the shape it belongs to.
_ATTRIBUTE_WORDS = {**{w: (0, w) for w in SIZES}, **{w: (1, w) for w in COLOURS}}
_SHAPE_WORDS = {w: (w, 2) for w in SHAPES}


def caption_facts(text: str) -> Facts:
    """The shapes (size, colour, shape, left to right), background and position a caption states."""
    words = tokenize(text)
    objects = parse_objects(words, _ATTRIBUTE_WORDS, _SHAPE_WORDS, {}, width=3, trailing=0)
    background = next((w for w in words if w in BACKGROUNDS), None)
    position = next((w for w in words if w in POSITIONS), None) if len(objects) == 1 else None
    return Facts(tuple(tuple(o) for o in objects), (background, position))


def scene_facts(record: dict[str, Any]) -> Facts:
    """The same facts from a scene record (:func:`_scene_record`)."""
    objects = tuple((s["size"], s["colour"], s["kind"]) for s in record["shapes"])
    return Facts(objects, (record["background"], record["position"]))


FACT_READER = FactReader(attributes=("sizes", "colours", "shapes"), scene_facts=("background", "position"),
                         caption=caption_facts, scene=scene_facts)


SHAPES_FAMILY = Family(
    name="shapes", generator="capkit.training.synthetic", version=SYNTHETIC_VERSION,
    description="capkit synthetic shapes captioning dataset", draw=_draw_shapes, extension="png",
    save_options={"format": "PNG", "compress_level": 6}, default_count=DEFAULT_COUNT,
    default_image_size=DEFAULT_IMAGE_SIZE, templates={"one shape": SINGLE_TEMPLATES, "two shapes": PAIR_TEMPLATES},
    cache_tag="", facts=FACT_READER)


def is_complete(out_dir: str | os.PathLike, count: int = DEFAULT_COUNT, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                splits: Sequence[float] = DEFAULT_SPLITS) -> bool:
    """True when ``out_dir`` holds a finished demo dataset generated with exactly these parameters."""
    return SHAPES_FAMILY.is_complete(out_dir, count, seed, image_size, splits)


def generate_synthetic(out_dir: str | os.PathLike, count: int = DEFAULT_COUNT, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                       splits: Sequence[float] = DEFAULT_SPLITS, progress: bool = True) -> Path:
    """Writes the demo dataset into ``out_dir`` (layout: :mod:`.family`) and returns its path; see
    :meth:`Family.generate`."""
    return SHAPES_FAMILY.generate(out_dir, count, seed, image_size, splits, progress)
