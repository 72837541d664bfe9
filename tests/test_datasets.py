"""Dataset readers: COCO (folder and single file), Karpathy, Flickr8k, JSONL and CSV, made tiny in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from capkit.runtime.errors import CapkitError
from capkit.training.datasets import (CaptionedImage, DatasetError, describe, detect_format, load_dataset,
                                      random_split)


def png(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def coco(files: dict[int, str], captions: dict[int, list[str]]) -> dict:
    anns = [{"id": 100 * i + k, "image_id": i, "caption": c} for i, caps in captions.items() for k, c in enumerate(caps)]
    return {"info": {}, "images": [{"id": i, "file_name": f, "width": 4, "height": 4} for i, f in files.items()],
            "annotations": anns}


def ids(records: list[CaptionedImage]) -> list[str]:
    return [r.image_id for r in records]


def test_coco_folder_with_split_files(tmp_path):
    for i in range(4):
        png(tmp_path / "images" / f"{i}.png")
    write_json(tmp_path / "annotations" / "captions_train.json", coco({0: "0.png", 1: "1.png"},
                                                                      {0: ["a red dog", " two red dogs "], 1: ["x"]}))
    write_json(tmp_path / "annotations" / "captions_val.json", coco({2: "2.png"}, {2: ["val caption"]}))
    write_json(tmp_path / "annotations" / "captions_test.json", coco({3: "3.png"}, {3: ["test caption"]}))
    splits = load_dataset(tmp_path)
    assert detect_format(tmp_path) == "coco-folder"
    assert [ids(splits[s]) for s in ("train", "val", "test")] == [["0", "1"], ["2"], ["3"]]
    first = splits["train"][0]
    assert first == CaptionedImage((tmp_path / "images" / "0.png").absolute(), ("a red dog", "two red dogs"), "0")
    assert describe(splits) == "train 2 images / 3 captions, val 1 images / 1 captions, test 1 images / 1 captions"


def test_coco_2014_folder_halves_val_into_val_and_test(tmp_path):
    png(tmp_path / "train2014" / "COCO_train2014_1.jpg")
    for i in range(10, 16):
        png(tmp_path / "val2014" / f"COCO_val2014_{i}.jpg")
    write_json(tmp_path / "annotations" / "captions_train2014.json",
               coco({1: "COCO_train2014_1.jpg"}, {1: ["a cat", "the cat"]}))
    write_json(tmp_path / "annotations" / "captions_val2014.json",
               coco({i: f"COCO_val2014_{i}.jpg" for i in range(10, 16)}, {i: [f"caption {i}"] for i in range(10, 16)}))
    splits = load_dataset(tmp_path)
    assert ids(splits["train"]) == ["1"]
    assert splits["train"][0].image == (tmp_path / "train2014" / "COCO_train2014_1.jpg").absolute()
    assert len(splits["val"]) == len(splits["test"]) == 3
    assert sorted(ids(splits["val"]) + ids(splits["test"])) == [str(i) for i in range(10, 16)]
    assert load_dataset(tmp_path) == splits  # seeded: the same halves every time
    assert {r.image.parent.name for r in splits["test"]} == {"val2014"}


def test_single_coco_file_with_image_folder_is_split_80_10_10(tmp_path):
    files = {i: f"img{i}.png" for i in range(10)}
    for name in files.values():
        png(tmp_path / "pics" / name)
    path = write_json(tmp_path / "ann" / "caps.json", coco(files, {i: [f"caption {i}"] for i in files}))
    splits = load_dataset(path, images=tmp_path / "pics")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert load_dataset(path, images=tmp_path / "pics", split_seed=0) == splits
    other = load_dataset(path, images=tmp_path / "pics", split_seed=5)
    assert {ids(other["val"])[0], ids(other["test"])[0]} != {ids(splits["val"])[0], ids(splits["test"])[0]}
    with pytest.raises(DatasetError, match=r"caps\.json: cannot find its images"):
        load_dataset(path)  # no image folder given and none beside the file


def test_single_coco_file_finds_its_sibling_image_folder(tmp_path):
    png(tmp_path / "val2014" / "a.jpg")
    png(tmp_path / "val2014" / "b.jpg")
    path = write_json(tmp_path / "annotations" / "captions_val2014.json", coco({1: "a.jpg", 2: "b.jpg"}, {1: ["x"], 2: ["y"]}))
    splits = load_dataset(path)
    records = splits["train"] + splits["val"] + splits["test"]
    assert {r.image for r in records} == {(tmp_path / "val2014" / n).absolute() for n in ("a.jpg", "b.jpg")}


def test_karpathy_split_file(tmp_path):
    images = [
        {"filepath": "val2014", "filename": "a.jpg", "split": "train", "cocoid": 7,
         "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}, {"tokens": ["the", "dog"]}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "cocoid": 8, "sentences": [{"raw": "b"}]},
        {"filepath": "train2014", "filename": "c.jpg", "split": "val", "cocoid": 9, "sentences": [{"raw": "c"}]},
        {"filepath": "train2014", "filename": "d.jpg", "split": "test", "cocoid": 10, "sentences": [{"raw": "d"}]},
    ]
    for im in images:
        png(tmp_path / "coco" / im["filepath"] / im["filename"])
    path = write_json(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})
    splits = load_dataset(path, images=tmp_path / "coco")
    assert [ids(splits[s]) for s in ("train", "val", "test")] == [["7", "8"], ["9"], ["10"]]
    assert splits["train"][0].captions == ("A dog.", "the dog")
    assert splits["test"][0].image == (tmp_path / "coco" / "train2014" / "d.jpg").absolute()


def test_karpathy_flickr_without_filepath_guesses_the_image_folder(tmp_path):
    images = [{"filename": f"{i}.jpg", "split": s, "imgid": i, "sentences": [{"raw": f"caption {i}"}]}
              for i, s in enumerate(["train", "train", "val", "test"])]
    for im in images:
        png(tmp_path / "Flicker8k_Dataset" / im["filename"])
    splits = load_dataset(write_json(tmp_path / "dataset_flickr8k.json", {"images": images}))
    assert [ids(splits[s]) for s in ("train", "val", "test")] == [["0.jpg", "1.jpg"], ["2.jpg"], ["3.jpg"]]


def flickr_token_file(folder: Path, names: list[str]) -> Path:
    lines = [f"{n}#{k}\t{n.split('.')[0]} caption number {k} ." for n in names for k in range(5)]
    path = folder / "Flickr8k.token.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_flickr8k_token_and_split_files(tmp_path):
    names = ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg",
             "1003163366_44323f5815.jpg", "extra_not_in_any_split.jpg"]
    for n in names:
        png(tmp_path / "Flicker8k_Dataset" / n)
    path = flickr_token_file(tmp_path, names)
    (tmp_path / "Flickr_8k.trainImages.txt").write_text(f"{names[0]}\n{names[1]}\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text(f"{names[2]}\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text(f"{names[3]}\n")
    splits = load_dataset(path, images=tmp_path / "Flicker8k_Dataset")
    assert [ids(splits[s]) for s in ("train", "val", "test")] == [names[:2], [names[2]], [names[3]]]
    assert len(splits["train"][0].captions) == 5
    assert splits["train"][0].captions[0] == "1000268201_693b08cb0e caption number 0 ."
    assert load_dataset(path) == splits  # the image folder is found beside the file


def test_flickr_token_without_split_files_and_missing_images(tmp_path):
    names = [f"{i}.jpg" for i in range(10)]
    for n in names[:-1]:
        png(tmp_path / "images" / n)
    path = flickr_token_file(tmp_path, names)
    with pytest.warns(UserWarning, match=r"1 of 10 images do not exist"):
        splits = load_dataset(path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7, 1, 1]


def test_jsonl_merges_rows_and_reads_caption_lists(tmp_path):
    for n in ("a.png", "sub/b.png", "c.png"):
        png(tmp_path / n)
    rows = [{"image": "a.png", "caption": "one", "split": "train"},
            {"image": "a.png", "caption": "two", "split": "train"},
            {"image": "sub/b.png", "captions": ["three", "four"], "split": "validation"},
            {"image": str((tmp_path / "c.png").absolute()), "caption": "five", "split": "test"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    splits = load_dataset(path)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert splits["train"][0].captions == ("one", "two")
    assert splits["val"][0] == CaptionedImage((tmp_path / "sub" / "b.png").absolute(), ("three", "four"), "sub/b.png")


def test_csv_with_and_without_split_column(tmp_path):
    for n in ("a.png", "b.png", "c.png"):
        png(tmp_path / "imgs" / n)
    with_split = tmp_path / "caps.csv"
    with_split.write_text('Image,Caption,split\na.png,"a red, round thing",train\na.png,second,train\n'
                          "b.png,b caption,dev\nc.png,c caption,test\n")
    splits = load_dataset(with_split, images=tmp_path / "imgs")
    assert splits["train"][0].captions == ("a red, round thing", "second")
    assert [ids(splits[s]) for s in ("train", "val", "test")] == [["a.png"], ["b.png"], ["c.png"]]
    no_split = tmp_path / "imgs" / "caps.csv"
    no_split.write_text("image,caption\na.png,x\nb.png,y\nc.png,z\n")
    splits = load_dataset(no_split)
    assert sorted(len(splits[s]) for s in ("train", "val", "test")) == [1, 1, 1]


def test_random_split_is_deterministic_and_disjoint():
    records = [CaptionedImage(Path(f"/{i}.png"), ("c",), str(i)) for i in range(50)]
    splits = random_split(records, seed=1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [40, 5, 5]
    assert sorted(ids(splits["train"] + splits["val"] + splits["test"]), key=int) == [str(i) for i in range(50)]
    assert random_split(records, seed=1) == splits and random_split(records, seed=2) != splits
    assert ids(splits["train"]) == sorted(ids(splits["train"]), key=int)  # source order kept


def test_missing_sources_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'absent.json'}: no such file or folder"):
        load_dataset(tmp_path / "absent.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no annotations/captions_"):
        load_dataset(tmp_path / "empty")
    path = write_json(tmp_path / "caps.json", coco({1: "a.png"}, {1: ["x"]}))
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'}: no such image folder"):
        load_dataset(path, images=tmp_path / "nope")
    (tmp_path / "pics").mkdir()
    with pytest.raises(DatasetError, match=r"caps\.json: none of its 1 images exist \(first: .*a\.png\)"):
        load_dataset(path, images=tmp_path / "pics")
    assert issubclass(DatasetError, CapkitError)


def test_malformed_files_name_file_and_line(tmp_path):
    bad_json = tmp_path / "captions.json"
    bad_json.write_text('{"images": [],\n "annotations": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DatasetError, match=r"captions\.json:3: not valid JSON"):
        load_dataset(bad_json)
    bad_jsonl = tmp_path / "d.jsonl"
    bad_jsonl.write_text('{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": \n')
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: not valid JSON"):
        load_dataset(bad_jsonl)
    no_caption = tmp_path / "e.jsonl"
    no_caption.write_text('{"image": "a.png"}\n')
    with pytest.raises(DatasetError, match=r"e\.jsonl:1: needs a \"caption\""):
        load_dataset(no_caption)
    bad_csv = tmp_path / "d.csv"
    bad_csv.write_text("file,text\na.png,x\n")
    with pytest.raises(DatasetError, match=r"d\.csv:1: the header needs 'image' and 'caption'"):
        load_dataset(bad_csv)
    ragged = tmp_path / "r.csv"
    ragged.write_text("image,caption\na.png,x\nb.png,y,extra\n")
    with pytest.raises(DatasetError, match=r"r\.csv:3: 3 fields, the header has 2"):
        load_dataset(ragged)
    bad_split = tmp_path / "s.csv"
    bad_split.write_text("image,caption,split\na.png,x,holdout\n")
    with pytest.raises(DatasetError, match=r"s\.csv:2: unknown split 'holdout'"):
        load_dataset(bad_split)
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("a.jpg#0\tfine\na.jpg#1 no tab here\n")
    with pytest.raises(DatasetError, match=r"Flickr8k\.token\.txt:2: expected 'IMAGE#N<TAB>caption'"):
        load_dataset(token)
    wrong = write_json(tmp_path / "other.json", {"foo": 1})
    with pytest.raises(DatasetError, match=r"other\.json: neither a COCO captions file"):
        load_dataset(wrong)
    dangling = write_json(tmp_path / "dangling.json", coco({1: "a.png"}, {2: ["x"]}))
    with pytest.raises(DatasetError, match=r"dangling\.json: annotations\[0\] refers to image id 2"):
        load_dataset(dangling, images=tmp_path)
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello\n")
    with pytest.raises(DatasetError, match=r"notes\.txt: unrecognised dataset format"):
        load_dataset(unknown)


def test_captions_per_image_are_a_fresh_seeded_subset_each_epoch(tmp_path):
    pytest.importorskip("torch")
    from capkit.runtime.preprocess import PreprocessSpec
    from capkit.runtime.vocab import Vocabulary
    from capkit.training.data import CaptionedImages

    captions = [f"caption number {w}" for w in ("one", "two", "three", "four", "five")]
    records = [CaptionedImage(png(tmp_path / f"{i}.png"), tuple(captions), str(i)) for i in range(3)]
    vocab = Vocabulary.build(captions)
    spec = PreprocessSpec(resize=8, crop=8)

    def drawn(dataset, epoch: int, i: int) -> list[str]:
        dataset.set_epoch(epoch)
        _, encoded, _, _ = dataset[i]
        return [vocab.decode(c.tolist()) for c in encoded]

    first = CaptionedImages(records, vocab, spec, 10, captions_per_image=2)
    assert [drawn(first, e, 0) for e in range(3)] == [captions[:2]] * 3  # no sampling: the first ones
    assert len(drawn(CaptionedImages(records, vocab, spec, 10), 0, 0)) == 5  # None: all of them

    sampled = CaptionedImages(records, vocab, spec, 10, captions_per_image=2, sample=True, seed=7)
    again = CaptionedImages(records, vocab, spec, 10, captions_per_image=2, sample=True, seed=7)
    draws = [drawn(sampled, e, i) for e in range(20) for i in range(3)]
    assert draws == [drawn(again, e, i) for e in range(20) for i in range(3)]  # same seed, epoch, item: same captions
    assert all(len(d) == 2 and len(set(d)) == 2 and set(d) <= set(captions) for d in draws)
    assert {c for d in draws for c in d} == set(captions)  # every caption is used over the epochs
    assert len({tuple(d) for d in draws}) > 3  # and the subsets change
    other = CaptionedImages(records, vocab, spec, 10, captions_per_image=2, sample=True, seed=8)
    assert draws != [drawn(other, e, i) for e in range(20) for i in range(3)]
