"""A second synthetic captioning family, "objects": coloured objects on patterned backdrops, as JPEG photos.

It exists to show that a training recipe tuned on the demo family (:mod:`.shapes`, "shapes") lands
on data it was not tuned on, so it shares none of the demo's content: other objects (heart, ring,
cross, diamond, arrow, crescent, hexagon), other colours, textured backdrops instead
of plain ones (named in the captions: striped, checkered, dotted, cloudy, wavy), other layouts
(one object; two stacked, "above"/"below"; two side by side, "next to"; a row of two or three
identical ones, "two"/"three") and other wording. Each image gets five references drawn from six
templates of its layout, with the backdrop named by an adjective or a noun ("a dotted backdrop",
"against dots") and symmetric relations said either way round, so that references vary like
COCO's; the references' leave-one-out BLEU-4 (:func:`capkit.training.evaluate.reference_ceiling`)
is about 0.6, not 1.

Every fact a caption states stays plain when the image is shrunk to 64 px: objects are at least
0.19 of the side (12+ px at 64), never touch each other or the border, and are saturated colours
on pale, low-saturation backdrops whose stripes, checks, dots and waves are 3-8 px features at 64 px,
smaller than any object (clouds are larger but soft, pale blotches). Images are 256 px JPEG
(quality 90) by default; the folder, splits and completion marker are the shared ones of
:class:`.family.Family`, and generation is, as there, a pure function of (count, seed, image size,
splits): each image draws from its own child generator, so image i does not depend on ``count``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from capkit.runtime.vocab import tokenize
from capkit.training.synthetic.facts import FactReader, Facts, parse_objects
from capkit.training.synthetic.family import CAPTIONS_PER_IMAGE, Family, article, jittered, palette

OBJECTS_VERSION = 1  # bump when the images or captions change, so that cached copies are regenerated
DEFAULT_COUNT = 3000
DEFAULT_IMAGE_SIZE = 256
TRAIN_SIZE = 64  # `capkit train`'s input side on this family (Family.train_size): every fact is plain at 64 px (above),
# and a run at 64 costs a twelfth of one at ResNet-18's 224 crop (seed 0: objects right 80% after 77 min at 224)
JPEG_QUALITY = 90  # saved with full-resolution colour (4:4:4): small objects keep their colour to the edge
SUPERSAMPLE = 2  # backdrop and objects drawn at 2x and box-downsampled: smooth edges at a low cost per image

# Saturated, mid-to-dark colours: far from each other and from every (pale, greyish) backdrop tone.
COLOURS = palette("navy", "lime", "magenta", "gold", "brown", "cyan")
OBJECTS: dict[str, str] = {  # singular -> plural
    "heart": "hearts", "ring": "rings", "cross": "crosses", "diamond": "diamonds", "arrow": "arrows",
    "crescent": "crescents", "hexagon": "hexagons",
}
BACKDROPS: dict[str, str] = {  # the adjective -> the noun a caption may use instead
    "striped": "stripes", "checkered": "checks", "dotted": "dots", "cloudy": "clouds", "wavy": "waves",
}
# (light, dark) tone pairs a backdrop pattern alternates between: low saturation, ~40 levels apart.
BACKDROP_TONES = (
    ((236, 226, 208), (196, 182, 160)),  # sand
    ((220, 229, 236), (172, 186, 200)),  # slate
    ((226, 233, 216), (184, 196, 172)),  # sage
)
COUNT_WORDS = {2: "two", 3: "three"}
LAYOUTS = ("single", "stack", "row", "group")  # equally likely
TILT = 12.0  # objects are turned by up to this many degrees either way (not mentioned in captions)

# Six templates per layout; five of them, drawn at random, are an image's references. They share
# most of their words ("on a {b} backdrop"), so the references' leave-one-out BLEU-4 is ~0.6: eight
# freer templates per layout gave ~0.35, a ceiling a model could not tell apart from noise.
# {c} colour, {o} object, {a} "a"/"an", {b} backdrop adjective, {B} backdrop noun; in "stack" 1 is the
# upper object and 2 the lower, in "row" 1 the left one and 2 the right one; {n} count word, {O} plural.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": (
        "a photo of {a} {c} {o} on a {b} backdrop",
        "an illustration showing {a} {c} {o} on a {b} backdrop",
        "{a} {c} {o} against {B}",
        "a single {c} {o} drawn on a {b} backdrop",
        "an image of {a} {c} {o} with {B} behind it",
        "{a} {c} {o} on a {b} pattern",
    ),
    "stack": (
        "{a1} {c1} {o1} above {a2} {c2} {o2} on a {b} backdrop",
        "a photo of {a1} {c1} {o1} above {a2} {c2} {o2}",
        "{a2} {c2} {o2} below {a1} {c1} {o1} on a {b} backdrop",
        "an illustration showing {a1} {c1} {o1} above {a2} {c2} {o2} against {B}",
        "{a1} {c1} {o1} on top of {a2} {c2} {o2} on a {b} pattern",
        "{a1} {c1} {o1} stacked over {a2} {c2} {o2} on a {b} backdrop",
    ),
    "row": (
        "{a1} {c1} {o1} next to {a2} {c2} {o2} on a {b} backdrop",
        "a photo of {a1} {c1} {o1} next to {a2} {c2} {o2}",
        "{a2} {c2} {o2} beside {a1} {c1} {o1} on a {b} backdrop",
        "an illustration showing {a1} {c1} {o1} next to {a2} {c2} {o2} against {B}",
        "{a1} {c1} {o1} and {a2} {c2} {o2} side by side on a {b} pattern",
        "{a1} {c1} {o1} placed next to {a2} {c2} {o2} on a {b} backdrop",
    ),
    "group": (
        "{n} {c} {O} on a {b} backdrop",
        "a photo of {n} {c} {O} in a row on a {b} backdrop",
        "an illustration showing {n} {c} {O} on a {b} backdrop",
        "a row of {n} {c} {O} against {B}",
        "{n} identical {c} {O} side by side on a {b} backdrop",
        "{n} {c} {O} lined up on a {b} pattern",
    ),
}


@dataclass(frozen=True)
class Item:
    kind: str  # a key of OBJECTS
    colour: str  # a key of COLOURS
    cx: float  # centre, fractions of the image side
    cy: float
    side: float  # bounding box side, fraction of the image side
    tilt: float  # degrees


@dataclass(frozen=True)
class ObjectScene:
    layout: str  # one of LAYOUTS
    backdrop: str  # a key of BACKDROPS
    items: tuple[Item, ...]  # in caption order: upper first ("stack"), left first ("row", "group")


def _items(rng: np.random.Generator, kinds: list[str], colours: list[str], centres: list[tuple[float, float]],
           side: tuple[float, float]) -> tuple[Item, ...]:
    return tuple(Item(k, c, float(x), float(y), float(rng.uniform(*side)), float(rng.uniform(-TILT, TILT)))
                 for k, c, (x, y) in zip(kinds, colours, centres))


def sample_scene(rng: np.random.Generator) -> ObjectScene:
    """One random scene in fractions of the side (so the same scene at any image size). Objects keep
    >= 5% of the side (3 px at 64) from each other and from the border even when tilted (a tilted
    object's extent is at most 1.05x its side)."""
    layout = str(rng.choice(LAYOUTS))
    backdrop = str(rng.choice(list(BACKDROPS)))
    kinds, colours = list(OBJECTS), list(COLOURS)
    if layout == "single":
        centre = (rng.uniform(0.40, 0.60), rng.uniform(0.40, 0.60))
        items = _items(rng, [str(rng.choice(kinds))], [str(rng.choice(colours))], [centre], (0.42, 0.55))
    elif layout in ("stack", "row"):
        pair = [str(c) for c in rng.choice(colours, size=2, replace=False)]
        along = [rng.uniform(0.24, 0.28), rng.uniform(0.72, 0.76)]  # first object's centre, second's
        across = [rng.uniform(0.38, 0.62), rng.uniform(0.38, 0.62)]
        centres = list(zip(across, along)) if layout == "stack" else list(zip(along, across))
        items = _items(rng, [str(rng.choice(kinds)) for _ in pair], pair, centres, (0.30, 0.36))
    else:
        n = int(rng.choice(list(COUNT_WORDS)))
        kind, colour = str(rng.choice(kinds)), str(rng.choice(colours))
        xs = [0.27, 0.73] if n == 2 else [0.18, 0.50, 0.82]
        y = rng.uniform(0.35, 0.65)
        centres = [(x + rng.uniform(-0.015, 0.015), y + rng.uniform(-0.03, 0.03)) for x in xs]
        items = _items(rng, [kind] * n, [colour] * n, centres, (0.30, 0.34) if n == 2 else (0.19, 0.22))
    return ObjectScene(layout, backdrop, items)


def captions_for(scene: ObjectScene, rng: np.random.Generator) -> list[str]:
    """Five of the layout's six templates, drawn without replacement, filled in."""
    values: dict[str, str] = {"b": scene.backdrop, "B": BACKDROPS[scene.backdrop]}
    first = scene.items[0]
    if scene.layout in ("single", "group"):
        values.update(c=first.colour, o=first.kind, a=article(first.colour), n=COUNT_WORDS.get(len(scene.items), ""),
                      O=OBJECTS[first.kind])
    else:
        for i, item in enumerate(scene.items, 1):
            values.update({f"c{i}": item.colour, f"o{i}": item.kind, f"a{i}": article(item.colour)})
    templates = TEMPLATES[scene.layout]
    chosen = rng.choice(len(templates), size=CAPTIONS_PER_IMAGE, replace=False)
    return [templates[int(j)].format(**values) for j in chosen]


# -- fact accuracy: an object is (colour, kind), in the scene's order (the upper one first, or the left one);
# the scene-wide fact is the backdrop. "{a2} {c2} {o2} below/beside {a1} {c1} {o1}" names the second one first.
_COLOUR_WORDS = {w: (0, w) for w in COLOURS}
_OBJECT_WORDS = {**{w: (w, 1) for w in OBJECTS}, **{plural: (w, 1) for w, plural in OBJECTS.items()}}
_BACKDROP_WORDS = {**{w: w for w in BACKDROPS}, **{noun: w for w, noun in BACKDROPS.items()}}
_COUNT_WORDS = {word: n for n, word in COUNT_WORDS.items()}
_SECOND_FIRST = ("below", "beside")  # the relation words of the templates that name the second object first


def caption_facts(text: str) -> Facts:
    """The objects (colour, kind), in the scene's order, and the backdrop a caption states."""
    words = tokenize(text)
    objects = parse_objects(words, _COLOUR_WORDS, _OBJECT_WORDS, _COUNT_WORDS, width=2)
    if any(w in _SECOND_FIRST for w in words):
        objects.reverse()
    backdrop = next((_BACKDROP_WORDS[w] for w in words if w in _BACKDROP_WORDS), None)
    return Facts(tuple(tuple(o) for o in objects), (backdrop,))


def scene_facts(record: dict[str, Any]) -> Facts:
    """The same facts from a scene record (:func:`_scene_record`)."""
    return Facts(tuple((o["colour"], o["kind"]) for o in record["objects"]), (record["backdrop"],))


FACT_READER = FactReader(attributes=("colours", "kinds"), scene_facts=("backdrop",), caption=caption_facts,
                         scene=scene_facts)


# ------------------------------------------------------------------------------------------- drawing


def _backdrop(name: str, rng: np.random.Generator, n: int) -> Image.Image:
    """The backdrop pattern at n x n: a 0/1 (or smooth, for "cloudy") field mixing a light and a dark tone."""
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n  # (n, n) each, fractions of the side
    phase = rng.uniform(0.0, 1.0)
    if name == "striped":  # diagonal stripes, either way
        u = (x + rng.choice([-1.0, 1.0]) * y) / math.sqrt(2)
        t = ((u / rng.uniform(0.09, 0.11) + phase) % 1.0) < 0.5
    elif name == "checkered":
        cell = rng.uniform(0.10, 0.13)
        t = (np.floor(x / cell + phase) + np.floor(y / cell + rng.uniform(0.0, 1.0))) % 2 == 1
    elif name == "dotted":  # dots on a staggered grid
        gap = rng.uniform(0.10, 0.12)
        row = np.floor(y / gap + phase)
        dx = (x / gap + 0.5 * (row % 2)) % 1.0 - 0.5
        dy = (y / gap + phase) % 1.0 - 0.5
        t = dx * dx + dy * dy < 0.3 ** 2
    elif name == "wavy":  # horizontal bands that swing up and down
        v = y + 0.04 * np.sin(2 * math.pi * (x / 0.3 + rng.uniform(0.0, 1.0)))
        t = ((v / rng.uniform(0.09, 0.11) + phase) % 1.0) < 0.5
    elif name == "cloudy":  # smooth blotches: a coarse random grid, bicubic-upsampled
        coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8))
        smooth = np.asarray(coarse.resize((n, n), Image.Resampling.BICUBIC), dtype=np.float64) / 255
        t = np.clip((smooth - smooth.mean()) * 2.5 + 0.5, 0.0, 1.0)
    else:
        raise ValueError(f"no backdrop {name!r}")
    light, dark = (np.asarray(jittered(tone, rng), dtype=np.float64) for tone in
                   BACKDROP_TONES[int(rng.integers(len(BACKDROP_TONES)))])
    pixels = light + np.asarray(t, dtype=np.float64)[..., None] * (dark - light)  # (n, n, 3)
    return Image.fromarray(np.round(pixels).astype(np.uint8))


# Outlines in units of the bounding box side, centred on 0, y down.
_DIAMOND = [(0.0, -0.5), (0.4, 0.0), (0.0, 0.5), (-0.4, 0.0)]
_HEXAGON = [(0.5 * math.cos(k * math.pi / 3), 0.5 * math.sin(k * math.pi / 3)) for k in range(6)]
_CROSS = [(-0.17, -0.5), (0.17, -0.5), (0.17, -0.17), (0.5, -0.17), (0.5, 0.17), (0.17, 0.17), (0.17, 0.5),
          (-0.17, 0.5), (-0.17, 0.17), (-0.5, 0.17), (-0.5, -0.17), (-0.17, -0.17)]
_ARROW = [(-0.5, -0.14), (0.05, -0.14), (0.05, -0.4), (0.5, 0.0), (0.05, 0.4), (0.05, 0.14), (-0.5, 0.14)]
_HEART_TIP = [(-0.49, -0.08), (0.49, -0.08), (0.0, 0.47)]
# (centre, radius, filled): discs drawn in order, a False one cutting a hole.
_DISCS = {"ring": [((0.0, 0.0), 0.5, True), ((0.0, 0.0), 0.27, False)],
          "crescent": [((0.0, 0.0), 0.5, True), ((0.25, -0.05), 0.42, False)],
          "heart": [((-0.24, -0.17), 0.26, True), ((0.24, -0.17), 0.26, True)]}
_POLYGONS = {"diamond": _DIAMOND, "hexagon": _HEXAGON, "cross": _CROSS, "arrow": _ARROW, "heart": _HEART_TIP}


def _draw_item(img: Image.Image, item: Item, fill: tuple[int, int, int]) -> None:
    n = img.size[0]
    side, cx, cy = item.side * n, item.cx * n, item.cy * n
    cos, sin = math.cos(math.radians(item.tilt)), math.sin(math.radians(item.tilt))

    def place(u: float, v: float) -> tuple[float, float]:  # unit coordinates -> tilted canvas pixels
        return cx + side * (u * cos - v * sin), cy + side * (u * sin + v * cos)

    mask = Image.new("L", img.size, 0)
    draw = ImageDraw.Draw(mask)
    if item.kind in _POLYGONS:
        draw.polygon([place(u, v) for u, v in _POLYGONS[item.kind]], fill=255)
    for (u, v), radius, filled in _DISCS.get(item.kind, []):
        x, y = place(u, v)
        r = radius * side
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255 if filled else 0)
    img.paste(fill, (0, 0, n, n), mask)


def render_scene(scene: ObjectScene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """The scene as an RGB image, drawn at SUPERSAMPLE x and downsampled (anti-aliased edges)."""
    img = _backdrop(scene.backdrop, rng, image_size * SUPERSAMPLE)
    for item in scene.items:
        _draw_item(img, item, jittered(COLOURS[item.colour], rng))
    return img.resize((image_size, image_size), Image.Resampling.BOX)


def _scene_record(scene: ObjectScene, image_size: int) -> dict[str, Any]:
    """What the captions describe, in pixels: box = [left, top, side] of each object, in caption order."""
    n = image_size
    return {"layout": scene.layout, "backdrop": scene.backdrop,
            "objects": [{"kind": it.kind, "colour": it.colour,
                         "box": [round((it.cx - it.side / 2) * n, 2), round((it.cy - it.side / 2) * n, 2),
                                 round(it.side * n, 2)]} for it in scene.items]}


def _draw_objects(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, list[str], dict[str, Any]]:
    scene = sample_scene(rng)
    image = render_scene(scene, image_size, rng)
    return image, captions_for(scene, rng), _scene_record(scene, image_size)


# The generator name is the one this family's folders have always carried in meta.json (its module's old
# name): kept, so that cached sets stay valid.
OBJECTS_FAMILY = Family(
    name="objects", generator="capkit.training.synthetic_objects", version=OBJECTS_VERSION,
    description="capkit synthetic objects-on-backdrops captioning dataset", draw=_draw_objects, extension="jpg",
    save_options={"format": "JPEG", "quality": JPEG_QUALITY, "subsampling": 0}, default_count=DEFAULT_COUNT,
    default_image_size=DEFAULT_IMAGE_SIZE, templates=TEMPLATES, cache_tag="objects", facts=FACT_READER,
    train_size=TRAIN_SIZE)
