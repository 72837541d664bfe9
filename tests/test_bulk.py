"""Bulk runs (capkit/bulk/, `capkit caption ... --out`): streaming listings, resume, torn lines, kill -9, Ray.

Order guarantee tested here: lines are in the listing's order (a folder: the file system's order); a
resumed run appends the images not yet done in that order, so an interrupted-then-resumed run equals an
uninterrupted one line for line when the listing's order is stable (a text listing, an unchanged folder),
byte for byte (logprobs too: a resumed run decodes each image in the batch an uninterrupted run would).
Against caption_batch (other batches), captions are compared on text and tokens exactly, logprob to 1e-5:
the batch an image is decoded in may move its logprob by a rounding error.

Hostile outputs, names and listings that could exhaust memory (/dev/zero as --out, a 300 MB line) run as
child processes under a memory cap in tests/hostile_bulk.py; here, the in-process classes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from capkit.runtime import Captioner
from capkit.bulk import output
from capkit.bulk.listing import iter_inputs
from capkit.bulk.local import run_bulk
from capkit.bulk.output import BulkError, KeySet, drop_torn_line
from capkit.runtime.errors import CapkitError

torch = pytest.importorskip("torch")

from capkit.cli import main  # noqa: E402
from capkit.export.checks import synthetic_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAPKIT = [str(Path(sys.executable).with_name("capkit"))]


@pytest.fixture(scope="module")
def bundle(export_kit) -> Path:
    return export_kit.bundle("lstm").folder


@pytest.fixture(scope="module")
def captioner(bundle) -> Captioner:
    return Captioner(bundle, device="cpu", threads=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 different images (png and jpg), a corrupt one, and a text file that is not listed."""
    folder = tmp_path_factory.mktemp("photos")
    for i, pixels in enumerate(synthetic_images(24, seed=7)):
        Image.fromarray(pixels).save(folder / f"p{i:02d}.{'png' if i % 2 else 'jpg'}", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_image(rows: list[dict]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for row in rows:
        assert row["image"] not in found, f"{row['image']} twice"
        found[row["image"]] = row
    return found


def assert_same_captions(got: list[dict], want: list[dict]) -> None:
    got_map, want_map = by_image(got), by_image(want)
    assert got_map.keys() == want_map.keys()
    for image, row in want_map.items():
        other = got_map[image]
        assert set(other) == set(row), image
        assert other.get("caption") == row.get("caption") and other.get("tokens") == row.get("tokens"), image
        assert other.get("error") == row.get("error"), image
        if "logprob" in row:
            assert other["logprob"] == pytest.approx(row["logprob"], abs=1e-5), image


def quiet(message: str) -> None:
    pass


# -- listings -----------------------------------------------------------------------------------------------------
def test_listings(photos, tmp_path: Path) -> None:
    a, b = str(photos / "p00.jpg"), str(photos / "p01.png")
    text = tmp_path / "paths.txt"
    text.write_text(f"{a}\n\n{b}\r\n" + "x" * 70_000 + "\n" + f"{a}\n")
    jsonl = tmp_path / "paths.jsonl"
    jsonl.write_text(json.dumps({"image": a}) + "\n" + json.dumps({"path": b}) + "\n{oops\n" + '{"other": 1}\n')
    table = tmp_path / "paths.csv"
    table.write_text(f"id,path\n1,{a}\n2,{b}\n")
    listed = iter_inputs([text, jsonl, table, photos, str(photos / "p0[01].*"), tmp_path / "missing.jpg"])
    assert iter(listed) is listed  # a generator: nothing is listed before it is asked for
    items = list(listed)
    ok = [item.path for item in items if item.error is None]
    errors = [item.error for item in items if item.error is not None]
    folder = sorted(str(photos / n) for n in os.listdir(photos) if not n.endswith(".txt"))
    assert ok[:7] == [a, b, a, a, b, a, b]
    assert sorted(ok[7:7 + len(folder)]) == folder  # the folder: its images, in the file system's order
    assert sorted(ok[7 + len(folder):]) == [a, b]
    assert len(errors) == 4
    assert "paths.txt line 4: longer than 65,536 characters" in errors[0]
    assert "paths.jsonl line 3: not JSON" in errors[1]
    assert "paths.jsonl line 4: no 'image' or 'path' field" in errors[2]
    assert "missing.jpg: no such file" in errors[3]
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,name\n1,x\n")
    assert "no 'image' or 'path' column" in list(iter_inputs([bad_csv]))[0].error


def test_key_set_merges_into_its_sorted_array(monkeypatch) -> None:
    monkeypatch.setattr(KeySet, "MERGE", 4)
    keys = KeySet()
    for i in range(50):
        keys.add(f"image-{i}.jpg")
    assert len(keys) == 50 and len(keys._recent) < 4  # most are in the sorted uint64 array
    assert all(f"image-{i}.jpg" in keys for i in range(50))
    assert not any(f"image-{i}.jpg" in keys for i in range(50, 200))


# -- runs in this process -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("readers", [0, 3])
def test_bulk_run_equals_caption_batch_and_resumes(captioner, photos, tmp_path: Path, readers: int) -> None:
    out = tmp_path / "captions.jsonl"
    summary = run_bulk(captioner, [photos], out, readers=readers, batch_size=5, status=quiet)
    rows = lines(out)
    listed = [item.path for item in iter_inputs([photos])]
    assert [row["image"] for row in rows] == listed  # the listing's order
    want = [c.to_dict() for c in captioner.caption_batch(listed)]
    assert_same_captions(rows, want)
    assert len({row.get("caption") for row in rows}) > 2, "degenerate model"
    assert summary.captioned == 24 and summary.failed == 1 and summary.skipped == 0
    assert "broken.png" in by_image(rows)[str(photos / "broken.png")]["error"]
    again = run_bulk(captioner, [photos, str(photos / "*.png")], out, readers=readers, status=quiet)
    assert (again.captioned, again.failed, again.skipped, again.repeated) == (0, 0, 25, 13)
    assert lines(out) == rows  # nothing appended


def test_a_torn_last_line_is_dropped_on_resume(captioner, photos, tmp_path: Path) -> None:
    listed = [item.path for item in iter_inputs([photos])]
    listing = tmp_path / "all.txt"
    listing.write_text("\n".join(listed) + "\n")
    whole = tmp_path / "whole.jsonl"
    run_bulk(captioner, [listing], whole, readers=2, status=quiet)
    half = tmp_path / "half.txt"
    half.write_text("\n".join(listed[:10]) + "\n")
    out = tmp_path / "out.jsonl"
    run_bulk(captioner, [half], out, readers=2, status=quiet)
    with open(out, "ab") as f:  # what a crash mid-write leaves: part of a line
        f.write(b'{"image": "' + listed[10].encode() + b'", "capt')
    messages: list[str] = []
    summary = run_bulk(captioner, [listing], out, readers=2, status=messages.append)
    assert summary.torn_bytes > 0 and summary.skipped == 10
    assert any("torn last line" in m for m in messages) and any("holds 10 images" in m for m in messages)
    assert out.read_bytes().endswith(b"\n")
    assert [row["image"] for row in lines(out)] == listed  # once each, in the listing's order
    assert_same_captions(lines(out), lines(whole))


def test_drop_torn_line_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"no newline at all")
    assert drop_torn_line(path) == 17 and path.read_bytes() == b""
    path.write_bytes(b"{}\n" + b"x" * 200_000)  # a torn line longer than one block read backwards
    assert drop_torn_line(path) == 200_000 and path.read_bytes() == b"{}\n"
    assert drop_torn_line(path) == 0


def test_a_torn_tail_longer_than_a_line_is_not_dropped(tmp_path: Path, monkeypatch) -> None:
    """A torn line is part of one line: a longer tail is not capkit's, and nothing is truncated."""
    monkeypatch.setattr(output, "MAX_OUTPUT_LINE", 1000)
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"image": "a.png", "error": "x"}\n' + b"\0" * 5000)
    with pytest.raises(BulkError, match="without a newline"):
        drop_torn_line(path)
    assert path.stat().st_size == 33 + 5000


def test_no_line_is_written_longer_than_the_resume_reads(tmp_path: Path, monkeypatch) -> None:
    """A caption line over MAX_OUTPUT_LINE (a vocabulary of huge words) is written as its image's error line."""
    monkeypatch.setattr(output, "MAX_OUTPUT_LINE", 400)
    path = tmp_path / "out.jsonl"
    with output.LineWriter(path) as writer:
        assert writer.write({"image": "a.png", "caption": "word " * 200, "tokens": [4] * 200, "logprob": -1.0}) is False
        assert writer.write({"image": "b.png", "caption": "word", "tokens": [4], "logprob": -1.0}) is True
    first, second = lines(path)
    assert first["image"] == "a.png" and "over the 400 a line may" in first["error"] and "caption" not in first
    assert second["caption"] == "word"


def test_skip_by_hash(captioner, photos, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("p00.jpg", "p01.png", "p02.jpg"):
        shutil.copy(photos / name, folder / name)
    shutil.copy(photos / "p00.jpg", folder / "copy-of-p00.jpg")
    out = tmp_path / "out.jsonl"
    summary = run_bulk(captioner, [folder], out, skip_by="hash", readers=2, status=quiet)
    assert summary.captioned == 3 and summary.repeated == 1  # the copy: same content, captioned once
    rows = lines(out)
    for row in rows:
        assert row["sha256"] == hashlib.sha256(Path(row["image"]).read_bytes()).hexdigest()
    os.rename(folder / "p01.png", folder / "renamed.png")  # the same content under a new name
    shutil.copy(photos / "p03.png", folder / "new.png")
    again = run_bulk(captioner, [folder], out, skip_by="hash", readers=2, status=quiet)
    # p00, p02 by path; copy-of-p00 (never written: a repeat) and renamed.png by hash; new.png captioned
    assert (again.captioned, again.skipped) == (1, 4)
    assert lines(out)[len(rows):][0]["image"] == str(folder / "new.png")


# -- hostile outputs, names and arguments (in process: nothing here can exhaust memory) -------------------------
def test_an_out_that_is_not_capkits_output_is_refused_untouched(captioner, photos, tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(output, "MAX_OUTPUT_LINE", 1000)
    capkit_line = json.dumps({"image": "a.png", "error": "a.png: no such file"}).encode() + b"\n"
    foreign = {
        "picture.png": (photos / "p01.png").read_bytes(),
        "random.jsonl": os.urandom(3000),
        "text.jsonl": b"hello\nworld\n",
        "array.jsonl": b"[1, 2]\n" + capkit_line,
        "object.jsonl": b'{"path": "a.png"}\n',
        "no-newline.jsonl": b"abc",
        "long-first.jsonl": b'{"image": "' + b"x" * 2000 + b'"}\n',
        "long-later.jsonl": capkit_line + b"x" * 2000 + b"\n",
        "long-tail.jsonl": capkit_line + b"x" * 2000,
    }
    for name, data in foreign.items():
        out = tmp_path / name
        out.write_bytes(data)
        with pytest.raises(BulkError, match="not capkit's output|not a line capkit|without a newline") as caught:
            run_bulk(captioner, [photos / "p00.jpg"], out, status=quiet)
        assert "\n" not in str(caught.value)
        assert out.read_bytes() == data, name  # not truncated, not appended to
    for name, data in (("empty.jsonl", b""), ("compact.jsonl", b'{"image":"a.png","error":"x"}\n'),
                       ("torn.jsonl", b'{"image": "a.png", "capt')):
        out = tmp_path / name
        out.write_bytes(data)
        summary = run_bulk(captioner, [photos / "p00.jpg"], out, status=quiet)
        assert summary.captioned == 1 and out.read_bytes().startswith(data if data.endswith(b"\n") else b"")


def test_names_that_are_not_utf8_are_written_once(captioner, photos, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.jpg")  # Latin-1 and a stray byte: not UTF-8
    shutil.copy(photos / "p00.jpg", odd)
    shutil.copy(photos / "p01.png", folder / "plain.png")
    out = tmp_path / "out.jsonl"
    first = run_bulk(captioner, [folder], out, status=quiet)
    assert first.captioned == 2
    written = out.read_bytes()
    rows = [json.loads(line) for line in written.decode("utf-8").splitlines()]  # valid UTF-8
    (row,) = [r for r in rows if "image_bytes" in r]
    assert base64.b64decode(row["image_bytes"]) == odd and row["image"].endswith("caf\\xe9-\\xff.jpg")
    assert "caption" in row
    again = run_bulk(captioner, [folder, os.fsdecode(odd)], out, status=quiet)
    assert (again.captioned, again.failed, again.skipped) == (0, 0, 2)
    assert out.read_bytes() == written


def test_caption_json_writes_names_that_are_not_utf8_as_bulk_files_do(bundle, photos, tmp_path: Path) -> None:
    """`capkit caption --json` without --out: valid UTF-8 on stdout, the exact name in image_bytes."""
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9-\xff.jpg")
    shutil.copy(photos / "p00.jpg", odd)
    proc = subprocess.run([sys.executable, "-m", "capkit", "caption", odd, str(photos / "p01.png"), "--json",
                           "--model", str(bundle)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert base64.b64decode(rows[0]["image_bytes"]) == odd and "caption" in rows[0]
    assert "image_bytes" not in rows[1]


def test_an_image_named_twice_is_captioned_once(captioner, photos, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photos / "p00.jpg", folder / "x.jpg")
    os.symlink("x.jpg", folder / "link.jpg")
    monkeypatch.chdir(tmp_path)
    names = [f"{folder}/./x.jpg", str(folder / "x.jpg"), str(folder / "link.jpg"), "in/x.jpg",
             f"{folder}/../in/x.jpg", f"{folder}//x.jpg", str(folder)]
    out = tmp_path / "out.jsonl"
    summary = run_bulk(captioner, names, out, status=quiet)
    assert (summary.captioned, summary.repeated) == (1, 7)  # the folder lists x.jpg and link.jpg
    assert [row["image"] for row in lines(out)] == names[:1]
    again = run_bulk(captioner, ["./in/link.jpg"], out, status=quiet)
    assert (again.captioned, again.skipped) == (0, 1)


@pytest.mark.parametrize("readers", [0, 2])
def test_a_resumed_run_writes_the_lines_of_an_uninterrupted_one(captioner, photos, tmp_path: Path,
                                                                readers: int) -> None:
    """Byte for byte, logprobs included: the resumed run decodes each image in the batch the uninterrupted
    run did (a logprob's 8th digit depends on the image's place in its batch)."""
    listed = [item.path for item in iter_inputs([photos], order="sorted")]
    listing = tmp_path / "all.txt"
    listing.write_text("\n".join(listed) + "\n")
    whole = tmp_path / "whole.jsonl"
    run_bulk(captioner, [listing], whole, readers=readers, batch_size=4, status=quiet)
    for cut in (2, 4, 9):  # the listing starts with broken.png: 1, 3 and 8 images done, batches shifted
        part = tmp_path / f"part-{cut}.txt"
        part.write_text("\n".join(listed[:cut]) + "\n")
        out = tmp_path / f"out-{cut}.jsonl"
        run_bulk(captioner, [part], out, readers=readers, batch_size=4, status=quiet)
        resumed = run_bulk(captioner, [listing], out, readers=readers, batch_size=4, status=quiet)
        assert resumed.skipped == cut
        assert out.read_bytes() == whole.read_bytes(), cut


def test_run_bulk_arguments_are_capkit_errors(captioner, photos, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    for bad in (None, 5, ["a.jsonl"], ""):
        with pytest.raises(BulkError, match="out must be a file path"):
            run_bulk(captioner, [photos / "p00.jpg"], bad, status=quiet)
    with pytest.raises(CapkitError, match="sources must be paths"):
        run_bulk(captioner, None, out, status=quiet)
    one = run_bulk(captioner, str(photos / "p00.jpg"), out, status=quiet)  # one path: one source
    assert (one.captioned, one.failed) == (1, 0)
    mixed = run_bulk(captioner, [None, photos / "p01.png", b"" + os.fsencode(photos / "p02.jpg")], out, status=quiet)
    assert (mixed.captioned, mixed.failed) == (2, 1)
    assert lines(out)[1] == {"image": "<NoneType>", "error": "<NoneType>: not a path (str, bytes or os.PathLike)"}


def test_cli_bulk_run(bundle, photos, tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    args = ["caption", str(photos), "--out", str(out), "--model", str(bundle), "--device", "cpu", "--readers", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # one image failed
    assert result.stdout == ""
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("captioned 24 images, 1 failed") and "images/s" in summary and '"error"' in summary
    assert len(lines(out)) == 25
    good = tmp_path / "good.txt"
    good.write_text(f"{photos / 'p00.jpg'}\n{photos / 'p05.png'}\n")
    result = CliRunner().invoke(main, ["caption", str(good), "--out", str(out), "--model", str(bundle),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 already" in result.stderr and "holds 25 images" in result.stderr
    for bad, words in ((["--readers", "2"], "--readers is for bulk runs"), (["--skip-by", "hash"], "--skip-by"),
                       (["--ray"], "--ray")):
        result = CliRunner().invoke(main, ["caption", str(photos / "p00.jpg"), "--model", str(bundle), *bad])
        assert result.exit_code == 2 and words in result.output


# -- subprocesses -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def many(photos, tmp_path_factory) -> Path:
    """A folder of 2,400 image files: 24 different 320x240 JPEGs, each hard-linked 100 times (cheap, distinct paths)."""
    folder = tmp_path_factory.mktemp("many")
    for i, pixels in enumerate(synthetic_images(24, seed=11)):
        first = folder / f"i{i:02d}-000.jpg"
        Image.fromarray(pixels).resize((320, 240)).save(first, quality=90)
        for j in range(1, 100):
            os.link(first, folder / f"i{i:02d}-{j:03d}.jpg")
    return folder


def bulk_command(source: Path, out: Path, bundle: Path, *extra: str) -> list[str]:
    return [*CAPKIT, "caption", str(source), "--out", str(out), "--model", str(bundle), "--device", "cpu",
            "--threads", "1", *extra]


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(bundle, many, tmp_path: Path) -> None:
    whole = tmp_path / "whole.jsonl"
    done = subprocess.run(bulk_command(many, whole, bundle), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen(bulk_command(many, out, bundle), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(out.read_bytes().splitlines())
    assert 0 < killed_at < 2400, f"not killed mid-way ({killed_at} lines)"
    resumed = subprocess.run(bulk_command(many, out, bundle), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {killed_at:,} already" in resumed.stderr
    assert len(lines(out)) == 2400
    assert out.read_bytes() == whole.read_bytes()  # each image once, in order, the very same lines


@pytest.mark.slow
def test_a_listing_is_streamed_in_flat_memory(bundle, tmp_path: Path) -> None:
    """200,000 missing paths in a text listing: each gives an error line, and the peak memory is that of a run
    of 20,000 (a list of 200,000 ImageInputs alone would add about 40 MB)."""
    peaks = {}
    for n in (20_000, 200_000):
        listing = tmp_path / f"paths-{n}.txt"
        with open(listing, "w") as f:
            for i in range(n):
                f.write(f"/nonexistent/capkit-bulk-test/some/longer/folder/name/image-{i:07d}.jpg\n")
        out = tmp_path / f"out-{n}.jsonl"
        script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                  "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", script, *bulk_command(listing, out, bundle, "--readers", "2")],
                              capture_output=True, text=True, timeout=120)
        code, peak = map(int, done.stdout.split())
        assert code == 1, done.stderr  # every image failed
        assert f"captioned 0 images, {n:,} failed" in done.stderr
        with open(out) as f:
            count = 0
            for line in f:
                row = json.loads(line)
                assert set(row) == {"image", "error"} and "no such file" in row["error"]
                count += 1
        assert count == n
        peaks[n] = peak  # KiB
    assert peaks[200_000] - peaks[20_000] < 12 * 1024, peaks


@pytest.mark.slow
def test_ray_gives_the_single_process_captions(bundle, photos, captioner, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from capkit.bulk.ray import caption_dataset, row_to_json, run_on_ray

    listed = [item.path for item in iter_inputs([photos])]
    want = [c.to_dict() for c in captioner.caption_batch(listed, temperature=0.8, seed=3)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        dataset = ray.data.from_items([{"path": p} for p in listed])
        rows = caption_dataset(dataset, bundle, concurrency=2, batch_size=4, temperature=0.8, seed=3).take_all()
        assert_same_captions([row_to_json(r) for r in rows], want)
        with_bytes = ray.data.from_items([{"image": p, "bytes": Path(p).read_bytes()} for p in listed[:6]])
        rows = caption_dataset(with_bytes, bundle, ship=False, temperature=0.8, seed=3).take_all()
        assert_same_captions([row_to_json(r) for r in rows], [r for r in want if r["image"] in listed[:6]])
        out = tmp_path / "ray.jsonl"
        summary = run_on_ray([photos], out, bundle, workers=2, batch_size=4, temperature=0.8, seed=3, status=quiet)
        assert (summary.captioned, summary.failed) == (24, 1)
        assert [row["image"] for row in lines(out)] == listed
        assert_same_captions(lines(out), want)
        parquet = tmp_path / "ray.parquet"
        run_on_ray([photos], parquet, bundle, workers=1, temperature=0.8, seed=3, status=quiet)
        import pyarrow.parquet as pq

        assert_same_captions([row_to_json(r) for r in pq.read_table(parquet).to_pylist()], want)
    finally:
        ray.shutdown()
