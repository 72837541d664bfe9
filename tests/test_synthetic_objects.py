"""The second synthetic family, "objects": deterministic, COCO-shaped, sharing no content word with the
demo family, and its captions say what the pixels show even at 64 px."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from capkit.cli import main
from capkit.runtime.vocab import tokenize
from capkit.training import synthetic
from capkit.training.data import CACHE_ENV, synthetic_dir
from capkit.training.datasets import load_dataset
from capkit.training.evaluate import reference_ceiling
from capkit.training.synthetic import META_FILE, OBJECTS_FAMILY, SHAPES_FAMILY, families, objects, shapes

COUNT, SIZE = 30, 64
# Words both families may use: articles, conjunctions, prepositions, and "two", a count here.
FUNCTION_WORDS = {"a", "an", "and", "on", "the", "in", "of", "with", "two"}
# sha256 of a 12-image demo set (decoded pixels + JSON), as the demo generator wrote it before families.
DEMO_DIGEST = "977fac2e8a8061183047101eab3c4c18f904807c6d4882deb35995bc24fb77c5"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return OBJECTS_FAMILY.generate(tmp_path_factory.mktemp("objects"), count=COUNT, seed=5, image_size=SIZE,
                                   progress=False)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def records_by_id(root: Path) -> dict[int, tuple[dict, list[str]]]:
    """{image id: (its COCO image entry with the scene, its captions)} over all splits."""
    out: dict[int, tuple[dict, list[str]]] = {}
    for split in ("train", "val", "test"):
        coco = json.loads((root / "annotations" / f"captions_{split}.json").read_text())
        for im in coco["images"]:
            out[im["id"]] = (im, [])
        for ann in coco["annotations"]:
            out[ann["image_id"]][1].append(ann["caption"])
    return out


def test_same_arguments_same_bytes(tmp_path, dataset):
    again = OBJECTS_FAMILY.generate(tmp_path / "again", count=COUNT, seed=5, image_size=SIZE, progress=False)
    assert all_files(again) == all_files(dataset)
    other = all_files(OBJECTS_FAMILY.generate(tmp_path / "other", count=COUNT, seed=6, image_size=SIZE,
                                              progress=False))
    assert other["images/000000.jpg"] != all_files(dataset)["images/000000.jpg"]
    fewer = OBJECTS_FAMILY.generate(tmp_path / "fewer", count=4, seed=5, image_size=SIZE, progress=False)
    for i in range(4):  # image i does not depend on count
        assert (fewer / f"images/{i:06d}.jpg").read_bytes() == (dataset / f"images/{i:06d}.jpg").read_bytes()


def test_loads_as_a_coco_folder_with_five_captions_each(dataset):
    splits = load_dataset(dataset)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [24, 3, 3]
    ids = [r.image_id for records in splits.values() for r in records]
    assert sorted(ids, key=int) == [str(i) for i in range(COUNT)]
    for record in (r for records in splits.values() for r in records):
        assert len(record.captions) == 5 and len(set(record.captions)) == 5
        assert all(len(tokenize(c)) <= 18 for c in record.captions)  # fits the default max length of 20
    meta = json.loads((dataset / META_FILE).read_text())
    assert meta["params"]["generator"] != SHAPES_FAMILY.generator
    assert meta["params"] == OBJECTS_FAMILY.params(COUNT, 5, SIZE, synthetic.DEFAULT_SPLITS)
    assert OBJECTS_FAMILY.is_complete(dataset, COUNT, 5, SIZE)
    assert not SHAPES_FAMILY.is_complete(dataset, COUNT, 5, SIZE)  # one family's folder is not the other's


def test_images_are_jpeg_of_the_requested_size(tmp_path, dataset):
    names = sorted(p.name for p in (dataset / "images").iterdir())
    assert names == [f"{i:06d}.jpg" for i in range(COUNT)]
    for name in names:
        with Image.open(dataset / "images" / name) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (SIZE, SIZE))
    other = OBJECTS_FAMILY.generate(tmp_path / "d", count=2, seed=0, image_size=80, progress=False)
    with Image.open(other / "images" / "000000.jpg") as img:
        assert (img.format, img.size) == ("JPEG", (80, 80))


def test_no_colour_object_or_backdrop_word_in_common_with_the_demo(dataset):
    demo_content = {w for t in shapes.SINGLE_TEMPLATES + shapes.PAIR_TEMPLATES
                    for w in tokenize(t.replace("{", " ").replace("}", " ")) if len(w) > 2 or w in FUNCTION_WORDS}
    demo_content |= set(shapes.COLOURS) | set(shapes.BACKGROUNDS) | set(shapes.SIZES)
    demo_content |= set(shapes.SHAPES) | {f"{s}s" for s in shapes.SHAPES}
    demo_content |= {w for phrase in shapes.POSITION_WORDS.values() for w in tokenize(phrase)}
    demo_content -= FUNCTION_WORDS
    assert {"red", "circle", "black", "small", "left", "picture", "shapes", "there"} <= demo_content  # it is the demo's
    ours = set(objects.COLOURS) | set(objects.OBJECTS) | set(objects.OBJECTS.values())
    ours |= set(objects.BACKDROPS) | set(objects.BACKDROPS.values())
    assert not ours & demo_content
    used = {w for _, caps in records_by_id(dataset).values() for c in caps for w in tokenize(c)}
    assert not used & demo_content, used & demo_content
    assert len(used & ours) >= 12  # the captions do use the family's own words


def test_ceiling_of_a_small_set_is_in_a_sane_band(dataset):
    """Varied but learnable: the references agree on content, not on every word (the full 3,000-image
    set's test split measures ~0.58 BLEU-4)."""
    ceiling = reference_ceiling(load_dataset(dataset)["train"])
    assert 0.45 < ceiling["bleu4"] < 0.75, ceiling
    assert ceiling["bleu1"] > ceiling["bleu4"] and ceiling["cider"] > 1.0


def colour_mask(pixels: np.ndarray, colour: str) -> np.ndarray:
    """Pixels within 50 RGB units of a colour's nominal value (jitter is +-8 a channel)."""
    distance = ((pixels.astype(np.int32) - np.asarray(objects.COLOURS[colour])) ** 2).sum(-1)  # (H, W)
    return distance <= 50 ** 2


def runs(profile: np.ndarray) -> int:
    """Runs of True in a 1-d profile, ignoring runs of a single pixel (edge noise)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], profile.astype(np.int8), [0]])))
    return sum(1 for start, stop in zip(edges[::2], edges[1::2]) if stop - start > 1)


def test_captions_say_what_a_64_pixel_thumbnail_shows(tmp_path):
    """At the default 256 px, shrunk to 64 px as a small model sees it: every named colour covers a
    clear area, no other object colour appears, "above" and "next to" match the colours' positions,
    and a "two"/"three" row has that many separate objects."""
    root = OBJECTS_FAMILY.generate(tmp_path / "big", count=14, seed=1, progress=False)
    layouts = set()
    for image_id, (entry, captions) in sorted(records_by_id(root).items()):
        scene = entry["scene"]
        layouts.add(scene["layout"])
        with Image.open(root / "images" / entry["file_name"]) as img:
            assert img.size == (256, 256)
            pixels = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
        words = {w for c in captions for w in tokenize(c)}
        named = {w for w in words if w in objects.COLOURS}
        assert named == {o["colour"] for o in scene["objects"]}
        assert scene["backdrop"] in words or objects.BACKDROPS[scene["backdrop"]] in words
        masks = {c: colour_mask(pixels, c) for c in objects.COLOURS}
        for colour in objects.COLOURS:
            if colour in named:
                assert masks[colour].sum() >= 40, (image_id, colour, int(masks[colour].sum()))
            else:
                assert masks[colour].sum() <= 2, (image_id, colour, int(masks[colour].sum()))
        centre = {c: np.argwhere(masks[c]).mean(0) for c in named}  # (row, column)
        first, second = (o["colour"] for o in scene["objects"][:2]) if len(named) == 2 else (None, None)
        if scene["layout"] == "stack":  # the scene lists the upper object first
            assert centre[first][0] + 16 < centre[second][0]
            for caption in captions:
                order = [w for w in tokenize(caption) if w in named]
                assert order == ([second, first] if "below" in tokenize(caption) else [first, second]), caption
        if scene["layout"] == "row":
            assert abs(centre[first][1] - centre[second][1]) > 16 and abs(centre[first][0] - centre[second][0]) < 16
        if scene["layout"] == "group":
            (colour,) = named
            count = runs(masks[colour].any(0))  # separate objects along the row
            assert objects.COUNT_WORDS[count] in words and count == len(scene["objects"]), (image_id, count)
    assert layouts == set(objects.LAYOUTS)  # the seed covers every layout, so every branch above ran


def test_cli_writes_each_family_to_its_own_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["data", "synthetic", "--family", "objects", "--count", "10", "--json"])
    assert result.exit_code == 0, result.output
    folder = Path(json.loads(result.stdout)["path"])
    assert folder == synthetic_dir(10, 0, objects.DEFAULT_IMAGE_SIZE, OBJECTS_FAMILY.cache_tag)
    assert folder != synthetic_dir(10, 0, objects.DEFAULT_IMAGE_SIZE)  # not the demo's folder
    assert synthetic_dir(10, 0, 64).name == "synthetic-n10-s0-px64"  # the demo's cached folders keep their names
    assert OBJECTS_FAMILY.is_complete(folder, 10, 0)  # the family's default size, 256 px
    with Image.open(folder / "images" / "000000.jpg") as img:
        assert img.size == (256, 256)


def test_cli_with_an_out_folder(tmp_path):
    out = tmp_path / "objs"
    result = CliRunner().invoke(main, ["data", "synthetic", "--family", "objects", "--count", "30", "--image-size",
                                       str(SIZE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert OBJECTS_FAMILY.is_complete(out, 30, 0, SIZE)
    assert "train 24 images / 120 captions" in result.stderr


def test_cli_bad_family_is_a_one_line_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["data", "synthetic", "--family", "animals", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'animals' is not one of 'shapes', 'objects'" in lines[0], result.output
    assert not (tmp_path / "x").exists()


def test_families_share_the_writer_and_the_demo_is_unchanged(tmp_path):
    """The demo family through the shared writer still writes what it always did: decoded pixels and
    JSON of a small set hashed (pixels, not PNG bytes, so a zlib update does not matter)."""
    assert families() == {"shapes": SHAPES_FAMILY, "objects": OBJECTS_FAMILY}
    root = synthetic.generate_synthetic(tmp_path / "demo", count=12, seed=3, progress=False)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix == ".png":
            digest.update(np.asarray(Image.open(path)).tobytes())
        elif path.is_file():
            digest.update(path.read_bytes())
    assert digest.hexdigest() == DEMO_DIGEST



def test_switching_family_in_one_folder_regenerates_and_cleans_up(tmp_path):
    out = OBJECTS_FAMILY.generate(tmp_path / "d", count=3, seed=0, image_size=SIZE, progress=False)
    synthetic.generate_synthetic(out, count=3, seed=0, progress=False)
    assert synthetic.is_complete(out, count=3, seed=0) and not OBJECTS_FAMILY.is_complete(out, 3, 0, SIZE)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(3)]


def test_runs_read_each_family_at_its_train_size_whole(tmp_path):
    """A run's default input side: the demo's images whole at their own size; the objects family's 256-pixel
    images shrunk whole to its train_size (every fact is plain there); a folder no family wrote: None (the
    backbone's own resize and crop)."""
    from capkit.training.data import synthetic_image_size

    demo = SHAPES_FAMILY.generate(tmp_path / "demo", count=10, seed=0, image_size=48, progress=False)
    assert synthetic_image_size(str(demo)) == 48
    assert OBJECTS_FAMILY.train_size is not None and OBJECTS_FAMILY.train_size < objects.DEFAULT_IMAGE_SIZE
    big = OBJECTS_FAMILY.generate(tmp_path / "big", count=6, seed=0, image_size=objects.DEFAULT_IMAGE_SIZE,
                                  progress=False)
    assert synthetic_image_size(str(big)) == OBJECTS_FAMILY.train_size
    small = OBJECTS_FAMILY.generate(tmp_path / "small", count=6, seed=0, image_size=32, progress=False)
    assert synthetic_image_size(str(small)) == 32  # never larger than the images are
    (big / META_FILE).unlink()
    assert synthetic_image_size(str(big)) is None
