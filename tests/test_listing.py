"""The one image lister (capkit/bulk/listing.py) behind every entry point: `capkit caption`, bulk runs (`--out`)
and Ray (`--out --ray`). A source that names nothing (a missing file, an empty folder, a glob with no match, a
bad listing line, a special file inside a folder) becomes an error line in its place: exit 1, and every good
image is still captioned.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from capkit.bulk.listing import iter_inputs

torch = pytest.importorskip("torch")

from capkit.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle(export_kit) -> Path:
    return export_kit.bundle("lstm").folder


@pytest.fixture
def sources(tmp_path: Path) -> tuple[list[str], str, list[str]]:
    """(sources, the good image, the start of each error line) for one good image and four that name nothing."""
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(good)
    empty = tmp_path / "empty"
    empty.mkdir()
    listing = tmp_path / "list.jsonl"
    listing.write_text("{not json\n")
    srcs = [str(tmp_path / "missing.jpg"), str(good), str(empty), str(tmp_path / "nothing-*.png"), str(listing)]
    errors = [f"{tmp_path / 'missing.jpg'}: no such file", f"{empty}: no images in this folder",
              f"{tmp_path / 'nothing-*.png'}: no file matches", f"{listing} line 1: not JSON"]
    return srcs, str(good), errors


def _error_lines(stderr: str) -> list[str]:
    return [line[len("Error: "):] for line in stderr.splitlines() if line.startswith("Error: ")]


def test_caption_reports_each_source_that_names_nothing(bundle, sources) -> None:
    srcs, good, errors = sources
    result = CliRunner().invoke(main, ["caption", *srcs, "--model", str(bundle), "--device", "cpu", "--json"])
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows if "caption" in r] == [good]
    got = _error_lines(result.stderr)
    assert len(got) == 4 and all(line.startswith(want) for line, want in zip(got, errors)), got


def test_bulk_run_reports_each_source_that_names_nothing(bundle, sources, tmp_path: Path) -> None:
    srcs, good, errors = sources
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["caption", *srcs, "--out", str(out), "--model", str(bundle), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows if "caption" in r] == [good]
    got = [r["error"] for r in rows if "error" in r]
    assert len(got) == 4 and all(line.startswith(want) for line, want in zip(got, errors)), got
    assert result.stderr.strip().splitlines()[-1].startswith("captioned 1 images, 4 failed")


def test_special_files_inside_a_folder_are_error_lines(bundle, tmp_path: Path) -> None:
    """A FIFO, a link loop and a broken link inside a scanned folder are listed; reading each reports it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    os.symlink("loop.png", folder / "loop.png")  # a link to itself
    os.symlink("nowhere.png", folder / "dangling.png")
    for order in ("sorted", "stream"):
        assert sorted(Path(i.path).name for i in iter_inputs([folder], order=order)) == [
            "a.png", "dangling.png", "loop.png", "pipe.png"]
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["caption", str(folder), "--out", str(out), "--model", str(bundle),
                                       "--device", "cpu"])
    assert result.exit_code == 1, result.output
    rows = {Path(r["image"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert "caption" in rows["a.png"]
    assert "not a regular file (a FIFO)" in rows["pipe.png"]["error"]
    assert "cannot read" in rows["loop.png"]["error"] and "no such file" in rows["dangling.png"]["error"]
    result = CliRunner().invoke(main, ["caption", str(folder), "--model", str(bundle), "--device", "cpu"])
    assert result.exit_code == 1 and len(_error_lines(result.stderr)) == 3, result.output


def test_sorted_and_streamed_list_the_same_images(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "c.webp", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.png").write_bytes(b"x")
    listing = tmp_path / "l.txt"
    listing.write_text("\ufeffa.jpg\nb.png\n")  # a BOM before the first path is not part of it
    streamed = [i.path for i in iter_inputs([tmp_path], order="stream")]
    assert [i.path for i in iter_inputs([tmp_path], order="sorted")] == sorted(streamed)
    assert sorted(Path(p).name for p in streamed) == ["a.jpg", "b.png", "c.webp"]
    assert [i.path for i in iter_inputs([listing])] == ["a.jpg", "b.png"]
    assert [i.path for i in iter_inputs([f"{tmp_path}/**/*.png"], order="sorted")] == [
        f"{tmp_path}/b.png", f"{tmp_path}/sub/d.png"]
    with pytest.raises(ValueError, match="order must be"):
        list(iter_inputs([tmp_path], order="random"))


def test_bad_listing_rows_are_error_lines_and_the_listing_goes_on(tmp_path: Path) -> None:
    """Each bad line or row is one error line, read a bounded piece at a time; the rows after it are still read."""
    table = tmp_path / "t.csv"
    table.write_text("\ufeffid,image\n1,a.png\n2," + "x" * 200_000 + "\n3,b.png\n4,\n5,c.png\n")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"image": "d.png"}\nnot json\n' + "[" * 50_000 + "\n" + '{"path": "e.png"}\n')
    text = tmp_path / "t.txt"
    text.write_text("\ufefff.png\n" + "y" * 100_000 + "\rg.png\n" + "z" * 2_000_000)  # the last line unterminated
    items = list(iter_inputs([table, jsonl, text]))
    assert [i.path for i in items if i.error is None] == ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png",
                                                          "g.png"]
    errors = [i.error for i in items if i.error is not None]
    assert [e.split(": ")[0] for e in errors] == [f"{table} line 3", f"{table} line 5", f"{jsonl} line 2",
                                                  f"{jsonl} line 3", f"{text} line 2", f"{text} line 4"]
    assert "a row longer than 65,536 characters" in errors[0] and "no value in column 'image'" in errors[1]
    assert "not JSON" in errors[2] and "not JSON" in errors[3] and "longer than 65,536" in errors[4]
    quoted = tmp_path / "quoted.csv"  # an unterminated quote: its field runs to the end of the file
    quoted.write_text('image\na.png\n"' + "w\n" * 100_000)
    assert "a row longer than" in [i.error for i in iter_inputs([quoted]) if i.error][0]
    headless = tmp_path / "headless.csv"
    headless.write_text("x" * 100_000 + "\na.png\n")
    assert [i.error for i in iter_inputs([headless])] == [f"{headless}: no 'image' or 'path' column in its header"]


def test_recursive_globs_do_not_enter_links_to_folders(tmp_path: Path) -> None:
    """glob's ``**`` enters links to folders: two links to the folder itself make its walk 2^depth long."""
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    for path in (folder / "a.png", folder / "sub" / "b.png"):
        path.write_bytes(b"x")
    os.symlink(".", folder / "l1")
    os.symlink(".", folder / "l2")
    os.symlink("..", folder / "sub" / "up")
    listed = itertools.islice(iter_inputs([f"{folder}/**/*.png"], order="stream"), 50)  # bounded on the old code
    assert sorted(i.path for i in listed) == [str(folder / "a.png"), str(folder / "sub" / "b.png")]
    assert [i.path for i in iter_inputs([f"{folder}/l1/*.png"])] == [str(folder / "l1" / "a.png")]  # named: entered


def test_sources_of_the_python_api(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    assert [i.path for i in iter_inputs(str(image))] == [str(image)]  # one path is one source, not its letters
    items = list(iter_inputs([None, 7, b"x" * 70_000, os.fsencode(image)]))
    assert [i.error.split(": ")[1] for i in items[:3]] == ["not a path (str, bytes or os.PathLike)"] * 2 + [
        "a name of 70,000 characters (at most 65,536)"]
    assert items[3].path == str(image)


# -- Ray ----------------------------------------------------------------------------------------------------------
def test_bundle_files_are_named_inside_the_resolved_folder(bundle, tmp_path: Path) -> None:
    from capkit.bulk.ray import bundle_payload, write_payload

    run = tmp_path / "run-1"
    run.mkdir()
    os.symlink(bundle, run / "bundle")
    os.symlink("run-1", tmp_path / "latest")  # as runs/latest -> runs/<name>
    payload = bundle_payload(tmp_path / "latest" / "bundle")
    assert all("/" not in name and not name.startswith(".") for name in payload), list(payload)
    target = tmp_path / "actor"
    target.mkdir()
    write_payload(payload, target)
    assert sorted(os.listdir(target)) == sorted(payload)
    for name in ("../escape.onnx", "/abs.onnx", "a/../../b.onnx", ""):
        with pytest.raises(Exception, match="outside|not a file name"):
            write_payload({name: b"x"}, tmp_path / "actor2")
    assert not (tmp_path / "escape.onnx").exists()


@pytest.mark.slow
def test_ray_run_through_a_linked_bundle_reports_sources_and_writes_nothing_outside(bundle, sources,
                                                                                      tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    from capkit.bulk.ray import run_on_ray

    srcs, good, errors = sources
    name = f"capkit-test-run-{uuid.uuid4().hex[:8]}"  # the bug wrote graphs to /<run name>/bundle/
    runs = tmp_path / "runs"
    (runs / name).mkdir(parents=True)
    os.symlink(bundle, runs / name / "bundle")
    os.symlink(name, runs / "latest")
    out = tmp_path / "ray.jsonl"
    try:
        summary = run_on_ray(srcs, out, runs / "latest" / "bundle", workers=1, batch_size=4, status=lambda m: None)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert (summary.captioned, summary.failed) == (1, 4)
        assert [r["image"] for r in rows if "caption" in r] == [good]
        got = [r["error"] for r in rows if "error" in r]
        assert all(line.startswith(want) for line, want in zip(got, errors)), got
    finally:
        assert not Path("/", name).exists()
