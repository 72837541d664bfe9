"""Hostile export targets and checkpoints: export never touches a file it did not write, a killed
export leaves a whole bundle, every bad checkpoint or encoder-weights file is one line, and a bundle
carries no path of the machine that made it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from capkit.cli import main  # noqa: E402
from capkit.export import ExportError, export_model  # noqa: E402
from capkit.export.onnx_export import export_checkpoint  # noqa: E402
from capkit.export.quantize import convert_fp16  # noqa: E402
from capkit.export.staging import ASIDE_PREFIX, STAGING_PREFIX, clean_stale  # noqa: E402
from capkit.models import CaptionModelConfig, build_backbone  # noqa: E402
from capkit.models.config import ModelConfigError  # noqa: E402
from capkit.runtime.bundle import load_bundle  # noqa: E402
from capkit.runtime.errors import CapkitError  # noqa: E402
from capkit.runtime.manifest import MANIFEST_NAME  # noqa: E402
from capkit.training.checkpoint import CheckpointError, checkpoint_payload, load_model, save_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- helpers ----------------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def work_folders(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((STAGING_PREFIX, ASIDE_PREFIX)))


def one_line_error(result) -> str:
    """The CLI's error: exit 1, exactly one line on stderr starting with ``Error:``, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    return lines[0]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Opaque:  # pickled by torch.save as a Python object: weights_only=True must refuse it
    def __init__(self) -> None:
        self.payload = [1, 2, 3]


@pytest.fixture
def lstm(export_kit):
    return export_kit.model("lstm"), export_kit.vocab, export_kit.spec, export_kit.max_length


def export(lstm, out: Path, **kwargs: Any):
    model, vocab, spec, max_length = lstm
    return export_model(model, vocab, spec, max_length, out, **kwargs)


# -- (a) a folder capkit did not write ----------------------------------------------------------------------------
def test_export_refuses_a_foreign_folder_and_leaves_it_byte_for_byte(lstm, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    (out / "encoder.onnx.data").write_bytes(os.urandom(1000))  # a name capkit might write: still not capkit's
    (out / "sub").mkdir()
    (out / "sub" / "x.bin").write_bytes(b"\0" * 10)
    before = snapshot(out)
    with pytest.raises(ExportError, match="not a capkit bundle") as e:
        export(lstm, out)
    assert "\n" not in str(e.value) and "--force" in str(e.value)
    assert snapshot(out) == before
    assert work_folders(tmp_path) == []


@pytest.mark.slow
def test_force_adds_the_bundle_beside_foreign_files_but_never_overwrites_one(export_kit, lstm, tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    export(lstm, out, force=True)
    assert load_bundle(out).manifest.precision == "fp32"
    assert (out / "notes.txt").read_text() == "keep me\n"

    # a bundle with a foreign file: refused without force, its own files replaced with force
    with pytest.raises(ExportError, match="other files"):
        export(lstm, out)
    export_model(export_kit.model("gru"), export_kit.vocab, export_kit.spec, export_kit.max_length, out, force=True)
    assert (out / "notes.txt").read_text() == "keep me\n"
    assert load_bundle(out).manifest.model["decoder"] == "gru"
    assert sorted(os.listdir(out)) == sorted([MANIFEST_NAME, "encoder.onnx", "decoder_step.onnx", "notes.txt"])

    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "encoder.onnx").write_bytes(b"someone else's model")
    with pytest.raises(ExportError, match="encoder.onnx would be overwritten"):
        export(lstm, clash, force=True)
    assert snapshot(clash) == {"encoder.onnx": b"someone else's model"}
    assert work_folders(tmp_path) == []


# -- (b) an existing bundle --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_replaces_an_existing_bundle_whole(export_kit, lstm, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    first = export(lstm, out)
    inode = out.stat().st_ino
    gru = export_kit.model("gru")
    second = export_model(gru, export_kit.vocab, export_kit.spec, export_kit.max_length, out)
    assert second.manifest.model["decoder"] == "gru" and first.manifest.model["decoder"] == "lstm"
    assert load_bundle(out).manifest.encoder.sha256 == second.manifest.encoder.sha256
    assert out.stat().st_ino != inode, "a new folder swapped in, not files rewritten in place"
    assert sorted(os.listdir(out)) == sorted([MANIFEST_NAME, "encoder.onnx", "decoder_step.onnx"])
    assert work_folders(tmp_path) == []


def test_a_failed_export_leaves_the_old_bundle_and_no_staging(lstm, tmp_path: Path, monkeypatch) -> None:
    import capkit.export.onnx_export as onnx_export

    out = tmp_path / "bundle"
    export(lstm, out)
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed\nsecond line")

    monkeypatch.setattr(onnx_export, "_export_graph", broken)
    with pytest.raises(ExportError, match="exporter crashed") as e:
        export(lstm, out)
    assert "\n" not in str(e.value)
    assert snapshot(out) == before
    load_bundle(out)
    assert work_folders(tmp_path) == []


def test_an_empty_folder_is_a_fine_target(lstm, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    export(lstm, out)
    load_bundle(out)


# -- (c) a path component that is a file -------------------------------------------------------------------------
def test_target_under_a_file_is_one_line(lstm, checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "bundle", blocker / "a" / "b"):
        with pytest.raises(ExportError, match="is a file, not a folder") as e:
            export(lstm, out)
        assert "\n" not in str(e.value)
        error = one_line_error(CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(out),
                                                         "--no-check"]))
        assert "is a file" in error
    assert blocker.read_text() == "x"


# -- (d) killed exports ------------------------------------------------------------------------------------------
def _export_process(checkpoint: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAPKIT_DEBUG": "1"}
    return subprocess.Popen([sys.executable, "-m", "capkit", "export", "--checkpoint", str(checkpoint), "--out", str(out),
                             "--no-check"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_an_export_killed_at_any_moment_leaves_a_whole_bundle(lstm, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    export(lstm, out)
    old_sha = load_bundle(out).manifest.encoder.sha256

    def staging_with(name: str | None):
        def seen() -> bool:
            for folder in tmp_path.glob(f"{STAGING_PREFIX}bundle-*"):
                if name is None or (folder / name).exists():
                    return True
            return False
        return seen

    moments = {"staging created": staging_with(None), "graph written": staging_with("encoder.onnx"),
               "manifest written": staging_with(MANIFEST_NAME)}
    reached = []
    for moment, predicate in moments.items():
        proc = _export_process(checkpoint, out)
        if _wait_for(predicate, proc):
            reached.append(moment)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        load_bundle(out)  # old or new, whole: sha256 of both graphs verified
    assert len(reached) >= 2, f"the kills landed at {reached} only; the test proved little"
    assert work_folders(tmp_path), "a killed export leaves its staging folder behind (removed by the next one)"

    # the next export removes the dead exports' staging folders and replaces the bundle
    export(lstm, out)
    assert work_folders(tmp_path) == []
    assert load_bundle(out).manifest.encoder.sha256 == old_sha  # the same model: the same graph bytes


def test_a_bundle_set_aside_by_a_killed_swap_is_put_back(lstm, tmp_path: Path) -> None:
    """Where the folders cannot be exchanged atomically, a kill between the two renames leaves the
    old bundle aside and no target: the next export (or clean_stale) renames it back first."""
    out = tmp_path / "bundle"
    export(lstm, out)
    before = snapshot(out)
    pid = dead_pid()
    aside = tmp_path / f"{ASIDE_PREFIX}bundle-{pid}-0123abcd"
    stale = tmp_path / f"{STAGING_PREFIX}bundle-{pid}-89abcdef"
    os.rename(out, aside)
    stale.mkdir()
    (stale / "encoder.onnx").write_bytes(b"half")
    alive = tmp_path / f"{STAGING_PREFIX}bundle-{os.getppid()}-00000000"  # a live process's: left alone
    alive.mkdir()
    other = tmp_path / f"{STAGING_PREFIX}bundle-x-{pid}-00000000"  # another target's: left alone
    other.mkdir()
    clean_stale(out)
    assert snapshot(out) == before
    assert work_folders(tmp_path) == sorted([alive.name, other.name])


def test_staging_is_removed_on_interrupt(lstm, tmp_path: Path, monkeypatch) -> None:
    import capkit.export.onnx_export as onnx_export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "graph_opset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(lstm, tmp_path / "bundle")
    assert os.listdir(tmp_path) == []


# -- (e) hostile checkpoints -------------------------------------------------------------------------------------
def _payload(export_kit) -> dict[str, Any]:
    return checkpoint_payload(export_kit.model("lstm"), export_kit.vocab, export_kit.spec, export_kit.max_length,
                              run_name="hostile")


def _config(export_kit, **changes: Any) -> dict[str, Any]:
    return {**_payload(export_kit)["model_config"], **changes}


def hostile_checkpoints(export_kit) -> Iterator[tuple[str, Any, str]]:
    """(name, payload or a writer, what the message must say)."""
    for key in ("model_config", "model", "vocab", "preprocess", "max_length"):
        payload = _payload(export_kit)
        del payload[key]
        yield f"no {key}", payload, f"no {key!r}"
    weights = dict(_payload(export_kit)["model"])
    weights["head.weight"] = torch.zeros(5, 5)
    yield "wrong shape", {**_payload(export_kit), "model": weights}, "head.weight has shape (5, 5)"
    weights = dict(_payload(export_kit)["model"])
    del weights["embed.weight"]
    yield "missing weight", {**_payload(export_kit), "model": weights}, "missing key 'embed.weight'"
    weights = {**_payload(export_kit)["model"], "extra.weight": torch.zeros(1)}
    yield "unexpected weight", {**_payload(export_kit), "model": weights}, "unexpected key 'extra.weight'"
    yield "string weight", {**_payload(export_kit), "model": {**weights, "head.bias": "x"}}, "not a tensor"
    yield "unknown decoder", {**_payload(export_kit), "model_config": _config(export_kit, decoder="transformer")}, \
        "unknown decoder 'transformer'"
    yield "unknown encoder", {**_payload(export_kit), "model_config": _config(export_kit, encoder="resnet9000")}, \
        "unknown encoder 'resnet9000'"
    yield "absurd hidden_dim", {**_payload(export_kit), "model_config": _config(export_kit, hidden_dim=10 ** 9)}, \
        "hidden_dim must be an integer"
    yield "big hidden_dim, small weights", {**_payload(export_kit), "model_config": _config(export_kit, hidden_dim=65536)}, \
        "weights do not fit the model"
    yield "absurd layers", {**_payload(export_kit), "model_config": _config(export_kit, layers=10 ** 6)}, "layers"
    yield "string embed_dim", {**_payload(export_kit), "model_config": _config(export_kit, embed_dim="16")}, "embed_dim"
    yield "vocab_size mismatch", {**_payload(export_kit), "model_config": _config(export_kit, vocab_size=99)}, \
        "vocab_size is 99"
    yield "config not a dict", {**_payload(export_kit), "model_config": [1, 2]}, "model_config must be a dict"
    yield "vocab of ints", {**_payload(export_kit), "vocab": [1, 2, 3]}, "vocab"
    yield "vocab without specials", {**_payload(export_kit), "vocab": ["a", "b", "c", "d", "e"]}, "vocab"
    yield "max_length string", {**_payload(export_kit), "max_length": "20"}, "max_length must be a int"
    yield "max_length huge", {**_payload(export_kit), "max_length": 10 ** 9}, "max_length must be from 1"
    yield "preprocess crop string", {**_payload(export_kit), "preprocess": {**export_kit.spec.to_dict(), "crop": "64"}}, \
        "preprocess"
    yield "preprocess a list", {**_payload(export_kit), "preprocess": [1]}, "preprocess must be a dict"
    yield "python object", lambda path: torch.save(Opaque(), path), "weights_only=True"
    yield "payload with an object", lambda path: torch.save({"format": 1, "model": Opaque()}, path), "weights_only=True"
    yield "a list", lambda path: torch.save([1, 2, 3], path), "not a dict"
    yield "no format", lambda path: torch.save({k: v for k, v in _payload(export_kit).items()}, path), "format None"
    yield "truncated", lambda path: path.write_bytes(b"PK\x03\x04garbage"), "not a readable capkit checkpoint"


@pytest.fixture(scope="module")
def hostile(export_kit, tmp_path_factory) -> list[tuple[str, Path, str]]:
    folder = tmp_path_factory.mktemp("hostile-checkpoints")
    cases = []
    for i, (name, content, expected) in enumerate(hostile_checkpoints(export_kit)):
        path = folder / f"{i:02d}.pt"
        if callable(content):
            content(path)
        else:
            save_checkpoint(content, path)
        cases.append((name, path, expected))
    return cases


@pytest.mark.slow
def test_hostile_checkpoints_are_one_line_errors_in_the_library(hostile) -> None:
    for name, path, expected in hostile:
        started = time.perf_counter()
        with pytest.raises(CheckpointError) as e:
            load_model(path)
        message = str(e.value)
        assert "\n" not in message and str(path) in message, (name, message)
        assert expected in message, (name, message)
        assert "weights_only=False" not in message, (name, message)
        assert time.perf_counter() - started < 10, f"{name}: must fail before building anything big"


@pytest.mark.slow
def test_hostile_checkpoints_are_one_line_errors_in_the_cli(hostile, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(image)
    runner = CliRunner()
    for name, path, expected in hostile:
        out = tmp_path / f"out-{path.stem}"
        exported = runner.invoke(main, ["export", "--checkpoint", str(path), "--out", str(out)])
        assert expected in one_line_error(exported), name
        assert not out.exists()
        captioned = runner.invoke(main, ["caption", "--checkpoint", str(path), str(image)])
        assert expected in one_line_error(captioned), name
    assert work_folders(tmp_path) == []


def test_the_good_checkpoint_still_loads(checkpoint: Path, export_kit) -> None:
    model, vocab, spec, payload = load_model(checkpoint)
    assert vocab == export_kit.vocab and spec == export_kit.spec and payload["max_length"] == export_kit.max_length
    reference = export_kit.model("lstm").state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in model.state_dict().items())


def test_model_config_bounds() -> None:
    with pytest.raises(ModelConfigError, match="hidden_dim"):
        CaptionModelConfig(vocab_size=30, hidden_dim=10 ** 9)
    with pytest.raises(ModelConfigError, match="layers"):
        CaptionModelConfig(vocab_size=30, layers=65)
    with pytest.raises(ModelConfigError, match="pretrained"):
        CaptionModelConfig(vocab_size=30, pretrained="yes")
    with pytest.raises(ModelConfigError, match="dropout"):
        CaptionModelConfig(vocab_size=30, dropout=float("nan"))
    with pytest.raises(ModelConfigError, match="vocab_size"):
        CaptionModelConfig.from_dict({"encoder": "resnet18"})
    assert dataclasses.asdict(CaptionModelConfig(vocab_size=30, hidden_dim=65536))["hidden_dim"] == 65536


# -- (f) encoder weights: offline --pretrained, a pickle, a wrong state dict -------------------------------------
@pytest.fixture
def offline(monkeypatch):
    import torchvision.models._api as api

    def no_network(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", no_network)


def test_pretrained_without_network_says_how_to_work_offline(offline) -> None:
    with pytest.raises(ModelConfigError) as e:
        build_backbone("resnet18", pretrained=True)
    message = str(e.value)
    assert "\n" not in message and "--encoder-weights" in message and "URLError" in message


def test_encoder_weights_that_are_not_a_state_dict(tmp_path: Path) -> None:
    pickled = tmp_path / "weights.pt"
    torch.save(Opaque(), pickled)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(2, 2)}, wrong)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, expected in ((pickled, "weights_only=True"), (wrong, "conv1.weight has shape (2, 2)"),
                           (tensor, "holds a Tensor"), (text, "not a state dict")):
        with pytest.raises(ModelConfigError) as e:
            build_backbone("resnet18", weights_file=path)
        message = str(e.value)
        assert "\n" not in message and f"--encoder-weights {path}" in message and expected in message, message
        assert "weights_only=False" not in message


def test_encoder_weights_that_fit_load(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    backbone, width = build_backbone("resnet18", weights_file=path)
    assert width == 512 and torch.equal(backbone.conv1.weight, source.conv1.weight)


@pytest.mark.slow
def test_train_cli_offline_and_pickled_weights_are_one_line(offline, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CAPKIT_CACHE", str(tmp_path / "cache"))
    pickled = tmp_path / "weights.pt"
    torch.save(Opaque(), pickled)
    common = ["train", "--synthetic-count", "10", "--epochs", "1", "--max-steps", "1", "--image-size", "16",
              "--embed-dim", "8", "--hidden-dim", "8", "--out", str(tmp_path / "runs"), "--no-progress"]
    for extra in (["--pretrained"], ["--encoder-weights", str(pickled)]):
        error = one_line_error(CliRunner().invoke(main, [*common, *extra]))
        assert "--encoder-weights" in error, error
    assert not list((tmp_path / "runs").rglob("*.pt"))


# -- (g) no absolute path in a bundle ----------------------------------------------------------------------------
def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.mark.slow
def test_a_bundle_carries_no_path_of_the_machine(export_kit, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "my-run"
    data = tmp_path / "datasets" / "coco2014"
    checkpoint = export_kit.checkpoint(run / "best.pt", "lstm", run_name="my-run", data_source=str(data), epoch=1,
                                       step=5, best_val_loss=1.0)
    out = tmp_path / "bundles" / "b"
    report = export_checkpoint(checkpoint, out, check=False, fp16=True)
    assert report.passed
    for folder in (out, tmp_path / "bundles" / "b-fp16"):
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        for text in strings(manifest):
            assert not text.startswith("/") and str(tmp_path) not in text and "\\" not in text, (folder, text)
    provenance = load_bundle(out).manifest.provenance
    assert provenance["checkpoint"] == "my-run/best.pt"
    assert provenance["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert provenance["data_source"] == "coco2014"
    assert load_bundle(tmp_path / "bundles" / "b-fp16").manifest.provenance["precision"]["from_bundle"] == "b"
    assert work_folders(tmp_path / "bundles") == []


@pytest.mark.slow
def test_variants_are_staged_too(export_kit, tmp_path: Path) -> None:
    fp32 = export_kit.bundle("lstm")
    out = tmp_path / "v"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    with pytest.raises(ExportError, match="not a capkit bundle"):
        convert_fp16(fp32, out)
    assert snapshot(out) == {"mine.txt": b"x"}
    convert_fp16(fp32, tmp_path / "w")
    convert_fp16(fp32, tmp_path / "w")  # replaced whole
    assert load_bundle(tmp_path / "w").manifest.precision == "fp16"
    assert work_folders(tmp_path) == []


def test_errors_are_capkit_errors() -> None:
    assert issubclass(ExportError, CapkitError) and issubclass(ModelConfigError, CapkitError)
    assert issubclass(CheckpointError, CapkitError)
