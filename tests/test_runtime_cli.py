"""`capkit caption`: the library first, then the command through click's CliRunner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from capkit.runtime import BundleError, Captioner
from capkit.runtime.manifest import MANIFEST_NAME
from capkit.runtime.providers import nvidia_driver_present

torch = pytest.importorskip("torch")

from capkit.cli import main  # noqa: E402
from capkit.cli.caption import caption as caption_command  # noqa: E402
from capkit.export.checks import synthetic_images  # noqa: E402

# conftest's one_torch_thread: tiny models are as fast on one thread, and several crawl on busy cores.
# conftest's checkpoint: best.pt of the model below, written with training.checkpoint.checkpoint_payload.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(export_kit):
    """conftest's tiny LSTM captioner, trained so that its captions differ between images."""
    return export_kit.model("lstm")


@pytest.fixture(scope="module")
def bundle(export_kit) -> Path:
    return export_kit.bundle("lstm").folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """a.png, b.jpg, c.png (different colours), plus a text file and a subfolder that are not captioned."""
    folder = tmp_path_factory.mktemp("photos")
    for name, pixels in zip(("c.png", "a.png", "b.jpg"), synthetic_images(3, seed=4)):
        Image.fromarray(pixels).save(folder / name, quality=95)
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "nested" / "d.png")
    return folder


@pytest.fixture(scope="module")
def expected(bundle, photos) -> dict[str, str]:
    """Library first: the captions the command must print."""
    captioner = Captioner(bundle, device="cpu")
    captions = {name: captioner.caption(photos / name) for name in ("a.png", "b.jpg", "c.png")}
    assert len({c.text for c in captions.values()}) > 1, "degenerate model: every image gets one caption"
    return {name: c.text for name, c in captions.items()}


def run(*args: str, env: dict | None = None):
    args = tuple(map(str, args))
    if "--device" not in args:  # auto would probe CUDA where an NVIDIA driver is present (test_auto_device_is_quiet)
        args += ("--device", "cpu")
    result = CliRunner().invoke(main, ["caption", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no crash
    assert "Traceback" not in result.output + result.stderr
    return result


def assert_user_error(result, *words: str) -> None:
    """Non-zero exit, one line on stderr naming the problem, nothing on stdout."""
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""


def test_command_is_registered() -> None:
    assert main.get_command(None, "caption") is caption_command


def test_one_image_plain(bundle, photos, expected) -> None:
    result = run(photos / "a.png", "--model", bundle)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected["a.png"] + "\n"
    assert result.stderr == ""


def test_auto_device_is_quiet(bundle, photos, expected, tmp_path: Path) -> None:
    """`capkit caption img.png` as a user types it, in a fresh process: device auto, the default install
    (onnxruntime-gpu). Without an NVIDIA driver the CPU is what is expected, so stderr stays empty; with
    one, CUDA is used or a single warning says why not."""
    env = {key: value for key, value in os.environ.items() if key not in ("CAPKIT_MODEL", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-m", "capkit", "caption", str(photos / "a.png"), "--model", str(bundle)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected["a.png"] + "\n"
    if not nvidia_driver_present():
        assert proc.stderr == ""
    else:
        lines = proc.stderr.splitlines()
        assert lines == [] or (len(lines) == 1 and "running on the CPU" in lines[0]), proc.stderr


def test_several_images_are_prefixed(bundle, photos, expected) -> None:
    result = run(photos / "b.jpg", photos / "a.png", "--model", bundle, "--batch-size", "1")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"{photos / 'b.jpg'}: {expected['b.jpg']}",
                                          f"{photos / 'a.png'}: {expected['a.png']}"]


def test_json(bundle, photos, expected) -> None:
    result = run(photos / "a.png", photos / "c.png", "--model", bundle, "--json")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(photos / "a.png"), str(photos / "c.png")]
    assert [r["caption"] for r in rows] == [expected["a.png"], expected["c.png"]]
    for row in rows:
        assert set(row) == {"image", "caption", "tokens", "logprob"}
        assert row["caption"] == expected[Path(row["image"]).name] and row["logprob"] < 0


def test_folder_and_glob(bundle, photos, expected) -> None:
    result = run(photos, "--model", bundle)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [f"{photos / n}: {expected[n]}" for n in ("a.png", "b.jpg", "c.png")]

    result = run(str(photos / "*.png"), "--model", bundle, "--json")  # the pattern is expanded by capkit
    assert result.exit_code == 0
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(photos / "a.png"),
                                                                                  str(photos / "c.png")]
    result = run(str(photos / "*.gif"), "--model", bundle)
    assert_user_error(result, "*.gif", "no file matches")


def test_sampling_options_reach_the_decoder(bundle, photos) -> None:
    captioner = Captioner(bundle, device="cpu")
    for options, args in [({"temperature": 1.0, "seed": 3, "top_k": 5}, ["--temp", "1", "--seed", "3", "--top-k", "5"]),
                          ({"temperature": 0.7, "seed": 4, "top_p": 0.9}, ["--temp", "0.7", "--seed", "4", "--top-p", "0.9"]),
                          ({"beam": 3, "max_length": 4}, ["--beam", "3", "--max-length", "4"])]:
        result = run(photos / "c.png", "--model", bundle, "--json", *args)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["tokens"] == list(captioner.caption(photos / "c.png", **options).tokens)


def test_one_bad_image_among_several(bundle, photos, expected, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    result = run(photos / "a.png", bad, tmp_path / "missing.jpg", photos / "c.png", "--model", bundle)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{photos / 'a.png'}: {expected['a.png']}",
                                          f"{photos / 'c.png'}: {expected['c.png']}"]
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and "bad.png" in errors[0] and "missing.jpg" in errors[1] and "no such file" in errors[1]

    result = run(photos / "a.png", bad, "--model", bundle, "--json")
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["caption"] == expected["a.png"]
    assert rows[1]["image"] == str(bad) and "bad.png" in rows[1]["error"] and set(rows[1]) == {"image", "error"}


@pytest.fixture
def bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    return path


def test_bad_images(bundle, tmp_path: Path, bomb: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    data = (Path(__file__).parent / "test_runtime_cli.py").read_bytes()
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + data[:50])
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, words in [(tmp_path / "missing.jpg", ["missing.jpg", "no such file"]), (corrupt, ["corrupt.png"]),
                        (text, ["text.jpg", "not an image"]), (bomb, ["bomb.png", "pixel limit"]),
                        (empty, [str(empty), "no images"])]:
        assert_user_error(run(path, "--model", bundle), *words)


@pytest.fixture
def broken_bundle(bundle, tmp_path: Path):
    def make(damage: str) -> Path:
        folder = tmp_path / f"bundle-{damage}"
        shutil.copytree(bundle, folder)
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if damage == "missing-file":
            (folder / manifest["graphs"]["decoder_step"]["file"]).unlink()
        elif damage == "sha256":
            with open(folder / manifest["graphs"]["encoder"]["file"], "ab") as f:
                f.write(b"\0")
        elif damage == "format-version":
            manifest["format_version"] = 99
            (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
        elif damage == "no-manifest":
            (folder / MANIFEST_NAME).unlink()
        elif damage == "bad-json":
            (folder / MANIFEST_NAME).write_text("{not json")
        return folder

    return make


@pytest.mark.parametrize("damage, words", [
    ("missing-file", ["decoder_step", "missing"]), ("sha256", ["encoder", "sha256"]),
    ("format-version", ["format_version", "99"]), ("no-manifest", [MANIFEST_NAME, "missing"]),
    ("bad-json", ["manifest"]),
])
def test_bad_bundles(broken_bundle, photos, damage: str, words: list[str]) -> None:
    folder = broken_bundle(damage)
    assert_user_error(run(photos / "a.png", "--model", folder), str(folder), *words)
    with pytest.raises(BundleError):
        Captioner(folder)


def test_missing_bundle(photos, tmp_path: Path) -> None:
    assert_user_error(run(photos / "a.png", "--model", tmp_path / "nowhere"), "nowhere", "no such bundle")
    empty_env = {"CAPKIT_MODEL": str(tmp_path / "elsewhere")}
    assert_user_error(run(photos / "a.png", env=empty_env), "elsewhere")


@pytest.mark.parametrize("args, words", [
    (["--temp", "-1"], ["temperature", "-1"]), (["--temp", "nan"], ["temperature", "nan"]),
    (["--top-p", "0"], ["top-p"]), (["--top-p", "1.5"], ["top-p", "1.5"]), (["--beam", "0"], ["beam"]),
    (["--top-k", "0"], ["top-k"]), (["--max-length", "0"], ["max-length"]), (["--batch-size", "0"], ["batch-size"]),
    (["--beam", "2", "--temp", "0.5"], ["beam"]), (["--threads", "0"], ["threads"]), (["--seed", "-3"], ["seed"]),
])
def test_bad_options(photos, tmp_path: Path, args: list[str], words: list[str]) -> None:
    # checked before anything is read: the (missing) bundle is never opened
    assert_user_error(run(photos / "a.png", "--model", tmp_path / "nowhere", *args), *words)


def test_model_and_checkpoint_together(bundle, checkpoint, photos) -> None:
    assert_user_error(run(photos / "a.png", "--model", bundle, "--checkpoint", checkpoint), "not both")


def test_default_model_from_environment(bundle, photos, expected) -> None:
    result = run(photos / "b.jpg", env={"CAPKIT_MODEL": str(bundle)})
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected["b.jpg"] + "\n"


def test_checkpoint_gives_the_bundles_captions(checkpoint, bundle, photos, expected) -> None:
    for source in (checkpoint, checkpoint.parent):  # a .pt file or a run folder (its best.pt)
        result = run(photos, "--checkpoint", source, "--device", "cpu", "--json")
        assert result.exit_code == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["caption"] for r in rows] == [expected[n] for n in ("a.png", "b.jpg", "c.png")]
    bundle_rows = [json.loads(line) for line in run(photos, "--model", bundle, "--json").stdout.splitlines()]
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in bundle_rows]
    assert [r["logprob"] for r in rows] == pytest.approx([r["logprob"] for r in bundle_rows], abs=1e-4)
    sampled = ["--temp", "1", "--seed", "11", "--json", "--top-p", "0.95"]
    assert [json.loads(line)["tokens"] for line in run(photos, "--checkpoint", checkpoint, *sampled).stdout.splitlines()] \
        == [json.loads(line)["tokens"] for line in run(photos, "--model", bundle, *sampled).stdout.splitlines()]


def test_bad_checkpoint(photos, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_user_error(run(photos / "a.png", "--checkpoint", junk), "junk.pt")
    assert_user_error(run(photos / "a.png", "--checkpoint", tmp_path / "no-run"), "no-run", "no such checkpoint")


def test_help() -> None:
    result = CliRunner().invoke(main, ["caption", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--checkpoint", "--temp", "--top-k", "--top-p", "--beam", "--max-length", "--seed",
                   "--device", "--batch-size", "--threads", "--json"):
        assert option in result.output
