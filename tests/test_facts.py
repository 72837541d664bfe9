"""Fact accuracy (training/synthetic/facts.py): every reference caption of every template of every family
states exactly its own scene's facts; a caption with a wrong word is caught where BLEU would not be."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from capkit.training.synthetic import families
from capkit.training.synthetic.facts import fact_accuracy, judge, scene_records
from capkit.training.synthetic.shapes import FACT_READER as SHAPES
from capkit.training.synthetic.objects import FACT_READER as OBJECTS


def _template_pattern(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{\w+\\\}", "[a-z ]+", re.escape(template)))  # {p}: "on the left"


@pytest.mark.parametrize("name", list(families()))
def test_every_reference_of_every_template_states_its_scene(name: str) -> None:
    family = families()[name]
    patterns = {t: _template_pattern(t) for kind in family.templates.values() for t in kind}
    seen: set[str] = set()
    rng = np.random.default_rng(11)
    for _ in range(300):
        _, captions, record = family.draw(rng, 48)
        truth = family.facts.scene(record)
        assert truth.objects and all(all(v is not None for v in o) for o in truth.objects), record
        for caption in captions:
            verdict = judge(family.facts, family.facts.caption(caption), truth)
            assert all(verdict.values()), (caption, family.facts.caption(caption), truth, verdict)
            seen.update(t for t, p in patterns.items() if p.fullmatch(caption))
    assert seen == set(patterns), set(patterns) - seen  # every template was read back


def test_shapes_facts_catch_what_bleu_forgives() -> None:
    record = {"background": "white", "position": None,
              "shapes": [{"kind": "circle", "colour": "blue", "size": "large"},
                         {"kind": "star", "colour": "yellow", "size": "small"}]}
    truth = SHAPES.scene(record)
    right = "a large blue circle and a small yellow star on a white background"
    assert all(judge(SHAPES, SHAPES.caption(right), truth).values())
    wrong_shape = judge(SHAPES, SHAPES.caption("a large blue square and a small yellow star on a white background"),
                        truth)
    assert not wrong_shape["exact"] and not wrong_shape["shapes"] and wrong_shape["colours"] and wrong_shape["sizes"]
    swapped = judge(SHAPES, SHAPES.caption("a large yellow circle and a small blue star on a white background"), truth)
    assert not swapped["colours"] and swapped["shapes"] and not swapped["exact"]  # colours bound to the wrong shapes
    one_missing = judge(SHAPES, SHAPES.caption("a large blue circle on a white background"), truth)
    assert not any(one_missing[k] for k in ("exact", "objects", "colours", "shapes", "sizes"))
    wrong_background = judge(SHAPES, SHAPES.caption("a large blue circle and a small yellow star on a black background"),
                             truth)
    assert wrong_background["objects"] and not wrong_background["background"] and not wrong_background["exact"]
    single = SHAPES.scene({"background": "gray", "position": "left",
                           "shapes": [{"kind": "triangle", "colour": "red", "size": "small"}]})
    assert not judge(SHAPES, SHAPES.caption("there is a small red triangle on the right"), single)["position"]
    assert SHAPES.caption("a red triangle, small, on gray").objects == (("small", "red", "triangle"),)


def test_objects_facts_read_order_and_counts() -> None:
    truth = OBJECTS.scene({"backdrop": "wavy", "objects": [{"kind": "ring", "colour": "gold"},
                                                            {"kind": "heart", "colour": "cyan"}]})
    assert all(judge(OBJECTS, OBJECTS.caption("a cyan heart below a gold ring on a wavy backdrop"), truth).values())
    assert not judge(OBJECTS, OBJECTS.caption("a cyan heart above a gold ring on a wavy backdrop"), truth)["exact"]
    group = OBJECTS.scene({"backdrop": "dotted", "objects": [{"kind": "hexagon", "colour": "gold"}] * 3})
    assert all(judge(OBJECTS, OBJECTS.caption("three gold hexagons lined up against dots"), group).values())
    assert not judge(OBJECTS, OBJECTS.caption("two gold hexagons against dots"), group)["objects"]


def test_fact_accuracy_over_a_split(tmp_path) -> None:
    family = families()["shapes"]
    out = family.generate(tmp_path / "d", count=20, seed=3, image_size=32, progress=False)
    scenes = scene_records(out / "annotations" / "captions_test.json")
    coco = json.loads((out / "annotations" / "captions_test.json").read_text())
    first = {str(a["image_id"]): a["caption"] for a in reversed(coco["annotations"])}  # each image's first reference
    assert set(first) == set(scenes) and len(scenes) >= 1
    assert fact_accuracy(SHAPES, first, scenes) == dict.fromkeys(SHAPES.keys, 1.0)
    wrong = {image_id: "a small pink star on a black background" for image_id in first}
    scores = fact_accuracy(SHAPES, wrong, scenes)
    assert scores["exact"] < 1.0 and list(scores) == list(SHAPES.keys)
    assert fact_accuracy(SHAPES, {}, scenes) == {}
