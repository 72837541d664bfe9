"""The built-in synthetic dataset: deterministic, COCO-shaped, and its captions say what the pixels show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from capkit.runtime.image_files import load_image
from capkit.runtime.vocab import tokenize
from capkit.training.datasets import describe, load_dataset
from capkit.training.synthetic import META_FILE, SyntheticError, generate_synthetic, is_complete, shapes
from capkit.training.synthetic.shapes import BACKGROUNDS, COLOURS, SHAPES

COUNT = 40
PALETTE = {**COLOURS, **BACKGROUNDS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), count=COUNT, seed=3, progress=False)


def read_split(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"captions_{split}.json").read_text())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def captions_by_image(root: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for split in ("train", "val", "test"):
        for ann in read_split(root, split)["annotations"]:
            out.setdefault(ann["image_id"], []).append(ann["caption"])
    return out


def colour_masks(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels within a small distance of each palette colour (anti-aliased edge pixels belong to none)."""
    names = list(PALETTE)
    palette = np.asarray([PALETTE[n] for n in names], dtype=np.int32)  # (K, 3)
    distance = ((pixels[:, :, None, :].astype(np.int32) - palette[None, None]) ** 2).sum(-1)  # (H, W, K)
    nearest = distance.argmin(-1)  # (H, W)
    close = distance.min(-1) <= 30 ** 2  # (H, W)
    return {n: (nearest == k) & close for k, n in enumerate(names)}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, dataset):
    again = generate_synthetic(tmp_path / "again", count=COUNT, seed=3, progress=False)
    assert all_files(again) == all_files(dataset)
    other = generate_synthetic(tmp_path / "other", count=COUNT, seed=4, progress=False)
    files, other_files = all_files(dataset), all_files(other)
    assert files.keys() == other_files.keys()
    assert files["images/000000.png"] != other_files["images/000000.png"]
    assert files["annotations/captions_train.json"] != other_files["annotations/captions_train.json"]


def test_image_does_not_depend_on_count(tmp_path, dataset):
    fewer = generate_synthetic(tmp_path / "fewer", count=5, seed=3, progress=False)
    for i in range(5):
        name = f"images/{i:06d}.png"
        assert (fewer / name).read_bytes() == (dataset / name).read_bytes()


def test_coco_layout_and_disjoint_sized_splits(dataset):
    seen: dict[str, set[int]] = {}
    ann_ids = set()
    for split in ("train", "val", "test"):
        coco = read_split(dataset, split)
        assert set(coco) >= {"info", "images", "annotations"}
        ids = {im["id"] for im in coco["images"]}
        for im in coco["images"]:
            assert (im["width"], im["height"]) == (64, 64)
            assert (dataset / "images" / im["file_name"]).is_file()
        for ann in coco["annotations"]:
            assert ann["image_id"] in ids and isinstance(ann["caption"], str)
            ann_ids.add(ann["id"])
        seen[split] = ids
    assert [len(seen[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
    assert seen["train"] | seen["val"] | seen["test"] == set(range(COUNT))
    assert len(ann_ids) == 5 * COUNT  # annotation ids unique across the splits
    meta = json.loads((dataset / META_FILE).read_text())
    assert meta["params"]["seed"] == 3 and meta["params"]["count"] == COUNT and meta["params"]["version"] >= 1


def test_five_varied_captions_per_image_with_a_small_vocabulary(dataset):
    captions = captions_by_image(dataset)
    assert len(captions) == COUNT
    for caps in captions.values():
        assert len(caps) >= 5 and len(set(caps)) == len(caps)
        assert all(len(tokenize(c)) <= 18 for c in caps)  # fits the default max length of 20 tokens
    words = {w for caps in captions.values() for c in caps for w in tokenize(c)}
    assert 25 <= len(words) <= 60


def test_load_dataset_reads_it(dataset):
    splits = load_dataset(dataset)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    record = splits["train"][0]
    assert record.image.is_absolute() and record.image.is_file() and len(record.captions) == 5
    assert describe(splits).startswith("train 32 images / 160 captions")


def test_captions_name_the_colours_and_left_to_right_order(dataset):
    captions = captions_by_image(dataset)
    for image_id in range(12):
        img = load_image(dataset / "images" / f"{image_id:06d}.png")
        assert img.size == (64, 64) and img.mode == "RGB"
        pixels = np.asarray(img)
        masks = colour_masks(pixels)
        words = [w for c in captions[image_id] for w in tokenize(c)]
        background = max(BACKGROUNDS, key=lambda n: masks[n].sum())
        assert masks[background].mean() > 0.45
        assert {w for w in words if w in BACKGROUNDS} == {background}
        present = {n for n in COLOURS if masks[n].sum() >= 20}  # a small shape covers ~60+ pixels
        named = {w for w in words if w in COLOURS}
        assert present == named, (image_id, present, captions[image_id])
        # Every caption that names two colours names the left one first.
        centre_x = {n: np.nonzero(masks[n])[1].mean() for n in present}
        for caption in captions[image_id]:
            order = [w for w in tokenize(caption) if w in COLOURS]
            assert order == sorted(order, key=centre_x.get)
            if len(order) == 1 and "left" in tokenize(caption):
                assert centre_x[order[0]] < 64 / 3
            if len(order) == 1 and "right" in tokenize(caption):
                assert centre_x[order[0]] > 2 * 64 / 3


def test_sizes_and_shapes_are_visible(dataset):
    """"large" shapes cover clearly more pixels than "small" ones, and every shape word is a known shape."""
    captions = captions_by_image(dataset)
    areas: dict[tuple[str, str], list[int]] = {}
    for image_id in range(COUNT):
        first = tokenize(captions[image_id][0])
        if len([w for w in first if w in COLOURS]) != 1:
            continue
        caption = next(c for c in captions[image_id] if tokenize(c)[:2] in (["a", "small"], ["a", "large"]))
        size, colour, shape = tokenize(caption)[1:4]
        assert shape in SHAPES
        mask = colour_masks(np.asarray(load_image(dataset / "images" / f"{image_id:06d}.png")))[colour]
        areas.setdefault((shape, size), []).append(int(mask.sum()))
    compared = [s for s in SHAPES if (s, "small") in areas and (s, "large") in areas]
    assert compared
    for shape in compared:  # sides differ by ~2x, so areas by ~4x
        assert max(areas[shape, "small"]) * 2 < min(areas[shape, "large"]), (shape, areas)


def test_complete_folder_is_not_regenerated(tmp_path, monkeypatch):
    out = generate_synthetic(tmp_path / "d", count=10, seed=0, progress=False)
    assert is_complete(out, count=10, seed=0)
    assert not is_complete(out, count=10, seed=1)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(shapes, "render_scene", fail)
    assert generate_synthetic(out, count=10, seed=0, progress=False) == out  # skipped: nothing drawn
    monkeypatch.undo()

    (out / "images" / "000004.png").unlink()  # an interrupted or damaged folder is generated again
    assert not is_complete(out, count=10, seed=0)
    generate_synthetic(out, count=10, seed=0, progress=False)
    assert is_complete(out, count=10, seed=0)

    generate_synthetic(out, count=6, seed=0, progress=False)  # other parameters: regenerated, stale images gone
    assert is_complete(out, count=6, seed=0) and not is_complete(out, count=10, seed=0)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(6)]


def test_interrupted_generation_is_not_complete(tmp_path, monkeypatch):
    out = tmp_path / "d"
    generate_synthetic(out, count=6, seed=0, progress=False)
    calls = []

    def render_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = shapes.render_scene
    monkeypatch.setattr(shapes, "render_scene", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(out, count=8, seed=0, progress=False)
    assert not (out / META_FILE).exists()
    assert not is_complete(out, count=6, seed=0) and not is_complete(out, count=8, seed=0)


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"seed": -1}, {"image_size": 16}, {"splits": (0.5, 0.5, 0.5)}])
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(SyntheticError):
        generate_synthetic(tmp_path / "d", progress=False, **{"count": 10, **kwargs})
