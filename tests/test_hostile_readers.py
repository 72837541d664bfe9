"""Hostile dataset files (tests/hostile_readers.py's reader corpus): wrong-typed ids, file names and captions,
repeated ids, numbers too long for Python, NaN, JSON nested 100,000 deep, FIFOs where files go, each refused
with one line naming the file and the entry; legal oddities (a BOM, string or 64-bit ids) load every record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from capkit.training.datasets import DatasetError, load_dataset


import hostile_readers as suite  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("readers")
    return folder, suite.reader_cases(folder)


def test_every_reader_case_holds_in_process(corpus) -> None:
    """Each case of the corpus in this process (the FIFO cases only in the child below: a regression there
    would wait for a writer forever)."""
    folder, cases = corpus
    results = [suite.try_reader(case, folder) for case in cases if "fifo" not in case.name.lower()]
    broken = [f"{r.name!r}: {'; '.join(r.problems)}" for r in results if r.problems]
    assert not broken, "\n".join(broken)


def test_the_reader_suite_counts_in_a_child(tmp_path: Path) -> None:
    """The whole surface, FIFOs included, in one child process under the corpus's memory limit and timeout:
    the counts the README's reliability section gives."""
    results = suite.run_surface("readers", tmp_path)
    broken = [f"{r.name!r}: {'; '.join(r.problems)}" for r in results if r.problems]
    assert not broken, "\n".join(broken)
    counts = suite.summary(results)
    assert counts["tried"] >= 70 and counts["refused cleanly"] == counts["hostile"] >= 60
    assert counts["results lost"] == 0 and counts["legal, kept"] == counts["tried"] - counts["hostile"]


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("value, shown", [([2], "list [2]"), ({"n": 2}, "dict {'n': 2}"), (float("nan"), "float NaN"),
                                          (True, "bool true"), (None, "NoneType null"), (1.5, "float 1.5"),
                                          (10 ** 30, "int an integer of 31 digits")])
def test_a_wrong_typed_coco_id_names_the_entry(tmp_path: Path, value, shown: str) -> None:
    doc = json.loads(json.dumps(suite.COCO))
    doc["images"][1]["id"] = value
    path = write(tmp_path / "caps.json", doc)
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    what = "an integer that fits in 64 bits" if isinstance(value, int) and value is not True else \
        "an integer or a non-empty string"
    assert str(e.value) == f"{path}: images[1]: the image id must be {what}, got {shown}"


def test_repeated_and_mixed_ids(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(suite.COCO))
    doc["images"][2]["id"] = 1
    with pytest.raises(DatasetError, match=r"caps\.json: images\[2\]: the id 1 is also images\[0\]'s$"):
        load_dataset(write(tmp_path / "caps.json", doc))
    doc["images"][2]["id"] = "3"
    with pytest.raises(DatasetError, match=r"images\[2\]: the id '3' is a string while images\[0\]'s is an integer"):
        load_dataset(write(tmp_path / "caps.json", doc))
    doc = json.loads(json.dumps(suite.COCO))
    doc["annotations"][0]["image_id"] = [1]
    with pytest.raises(DatasetError, match=r"annotations\[0\]: the image id must be an integer or a non-empty string"):
        load_dataset(write(tmp_path / "caps.json", doc))


def test_one_id_for_two_files_is_refused_not_merged(tmp_path: Path) -> None:
    """Before, the second file's image was silently dropped and its captions given to the first."""
    suite._images(tmp_path)
    lines = [{"image": "a.png", "caption": "x", "image_id": 7}, {"image": "b.png", "caption": "y", "image_id": "7"}]
    path = write(tmp_path / "d.jsonl", "\n".join(map(json.dumps, lines)))
    with pytest.raises(DatasetError, match=r"d\.jsonl: image id '7' names two files \(.*a\.png and .*b\.png\)"):
        load_dataset(path)


@pytest.mark.parametrize("name, text", [("deep.json", "[" * 100_000 + "]" * 100_000),
                                        ("deep.jsonl", '{"image": "a.png", "caption": ' + "[" * 100_000),
                                        ("long.json", '{"images": [{"id": ' + "9" * 5000 + "}]}")])
def test_json_python_cannot_hold_is_one_line(tmp_path: Path, name: str, text: str) -> None:
    """Nested deeper than the parser's recursion (a RecursionError before) or an integer of more than 4,300 digits
    (a ValueError): one DatasetError line."""
    path = write(tmp_path / name, text)
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    expected = "nested too deeply" if "deep" in name else "Exceeds the limit (4300 digits)"
    assert str(e.value).startswith(str(path)) and expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_being_read(tmp_path: Path) -> None:
    """Run in a thread: a regression waits for a writer, and the test then plays one to end the wait."""
    fifo = tmp_path / "data.json"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            load_dataset(fifo)
        except BaseException as e:  # judged below
            outcome.append(e)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(10)
    waited = reader.is_alive()
    if waited:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets end-of-file
        reader.join(10)
    assert not waited, "load_dataset waited for a writer on a FIFO"
    assert isinstance(outcome[0], DatasetError) and str(outcome[0]) == f"{fifo}: not a regular file (a FIFO)"


@pytest.mark.slow
@pytest.mark.parametrize("name, doc, entry", [
    ("ids.json", {**suite.COCO, "images": [{"id": [1], "file_name": "a.png"}]}, "images[0]: the image id must be"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
])
def test_capkit_train_refuses_in_one_line(tmp_path: Path, name: str, doc, entry: str) -> None:
    """Through the command: exit 1 and one ``Error:`` line (exit 70, the last-resort guard, before)."""
    path = write(tmp_path / name, doc)
    env = {k: v for k, v in os.environ.items() if k != "CAPKIT_DEBUG"}  # the user's view
    proc = subprocess.run([sys.executable, "-m", "capkit", "train", "--data", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: {entry}"), proc.stderr
    assert proc.stdout == ""
