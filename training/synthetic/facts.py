"""Fact accuracy: what a caption states, checked against the scene the data generator recorded.

BLEU rewards a fluent caption with one wrong noun ("a large blue square" for a blue circle shares most of
its n-grams with the references); fact accuracy cannot be fooled that way. Each synthetic family reads the
facts back from a caption (:attr:`FactReader.caption`) and from its scene record (:attr:`FactReader.scene`),
both as :class:`Facts`; :func:`fact_accuracy` compares them over a set of images:

- ``exact``: every object with every attribute, in the scene's order, and every scene-wide fact the caption
  states (the background, a position): the caption is right;
- ``objects``: every object with every attribute, in order (the scene-wide facts aside);
- one share per attribute (``colours``, ``shapes``, ``sizes`` ...): that attribute of every object, in order
  (a caption naming the wrong number of objects gets every attribute wrong);
- one share per scene-wide fact (``background``, ``position`` ...): right, or not stated (a reference caption
  that leaves the background out is not wrong about it).

A reference caption scores 100% against its own scene (tests/test_facts.py checks every template of every
family). Data without recorded scenes (COCO, a foreign folder) has no fact accuracy: absent, not zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

Attributes = tuple[str, ...]  # one object's attribute values, in FactReader.attributes' order


@dataclass(frozen=True)
class Facts:
    """The facts of a scene, or those a caption states."""

    objects: tuple[Attributes, ...]  # each object's attributes, in the scene's order (left to right, top down)
    scene: tuple[Optional[str], ...]  # each scene-wide fact in FactReader.scene_facts' order; None: not stated


@dataclass(frozen=True)
class FactReader:
    """How one family's facts are read: from a caption and from a scene record."""

    attributes: tuple[str, ...]  # the plural names of an object's attributes, e.g. ("sizes", "colours", "shapes")
    scene_facts: tuple[str, ...]  # the names of the scene-wide facts, e.g. ("background", "position")
    caption: Callable[[str], Facts]  # a caption's words -> the facts it states
    scene: Callable[[dict[str, Any]], Facts]  # a scene record (the annotations' images[i]["scene"]) -> its facts

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of :func:`fact_accuracy`'s answer, in table order."""
        return ("exact", "objects", *self.attributes, *self.scene_facts)


def judge(reader: FactReader, said: Facts, truth: Facts) -> dict[str, bool]:
    """Which facts of ``truth`` the caption's ``said`` gets right (keys: ``reader.keys``)."""
    verdict = {"objects": said.objects == truth.objects}
    for i, name in enumerate(reader.attributes):
        verdict[name] = [o[i] for o in said.objects] == [o[i] for o in truth.objects]
    for name, stated, real in zip(reader.scene_facts, said.scene, truth.scene):
        verdict[name] = stated is None or stated == real
    verdict["exact"] = verdict["objects"] and all(verdict[name] for name in reader.scene_facts)
    return {key: verdict[key] for key in reader.keys}


def fact_accuracy(reader: FactReader, captions: dict[str, str], scenes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The share of ``captions`` ({image id: caption}) right on each fact of their image's scene
    (``scenes``: {image id: scene record}); images without a caption are left out."""
    judged = [judge(reader, reader.caption(text), reader.scene(scenes[image_id]))
              for image_id, text in captions.items()]
    if not judged:
        return {}
    return {key: sum(v[key] for v in judged) / len(judged) for key in reader.keys}


@dataclass(frozen=True)
class FactCheck:
    """A split's scenes with their family's reader: what :func:`capkit.training.evaluate.evaluate` scores
    captions against (``capkit.training.synthetic.fact_check`` finds it for a dataset folder)."""

    reader: FactReader
    scenes: dict[str, dict[str, Any]]  # {image id: scene record}

    def score(self, captions: dict[str, str]) -> dict[str, float]:
        """:func:`fact_accuracy` of ``captions`` ({image id: caption}) over the images that have a scene."""
        return fact_accuracy(self.reader, {k: v for k, v in captions.items() if k in self.scenes}, self.scenes)


def scene_records(annotations: Path) -> dict[str, dict[str, Any]]:
    """{image id: scene record} of a synthetic family's COCO captions file (ids as strings, as the dataset
    readers give them); empty when the file's images record no scene."""
    coco = json.loads(Path(annotations).read_text())
    return {str(image["id"]): image["scene"] for image in coco.get("images", []) if isinstance(image.get("scene"), dict)}


def parse_objects(words: Iterable[str], attribute_of: dict[str, tuple[int, str]], noun_of: dict[str, tuple[str, int]],
                  count_of: dict[str, int], width: int, trailing: Optional[int] = None) -> list[list[Optional[str]]]:
    """Objects as a caption states them, in the caption's order. ``attribute_of``: word -> (attribute index,
    value); ``noun_of``: word -> (the object's noun value, its attribute index), which closes an object;
    ``count_of``: a count word ("two") makes the next object that many; ``trailing``: the index of an
    attribute that may follow its noun ("a blue square, large,"), given to the last object when it lacks it
    and no new object has begun."""
    objects: list[list[Optional[str]]] = []
    current: list[Optional[str]] = [None] * width
    count = 1
    for word in words:
        if word in count_of:
            count = count_of[word]
        elif word in noun_of:
            value, index = noun_of[word]
            current[index] = value
            objects += [list(current) for _ in range(count)]
            current, count = [None] * width, 1
        elif word in attribute_of:
            index, value = attribute_of[word]
            if index == trailing and objects and objects[-1][index] is None and all(v is None for v in current):
                objects[-1][index] = value
            else:
                current[index] = value
    return objects


__all__ = ["Attributes", "FactCheck", "FactReader", "Facts", "fact_accuracy", "judge", "parse_objects",
           "scene_records"]
