"""Model presets: `capkit train --preset edge` builds the edge model (typed options win), the run
remembers its preset, export writes the preset's int8 bundle unless told not to, and backbones
trained from scratch get batch-norm statistics that keep up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capkit.cli import main
from capkit.models import CaptionModel, CaptionModelConfig
from capkit.models.presets import PRESETS, preset
from capkit.training.checkpoint import LAST, load_checkpoint
from capkit.training.synthetic import generate_synthetic
from capkit.training.train import TrainConfig, TrainingError, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", count=24, seed=2, image_size=SIZE,
                              progress=False)


def cli_train(dataset: Path, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["train", "--data", str(dataset), "--image-size", str(SIZE), "--epochs", "1",
                                       "--max-steps", "1", "--batch-size", "8", "--bleu-images", "0", "--no-progress",
                                       "--device", "cpu", "--out", str(out), "--name", "run", *extra])
    assert result.exit_code == 0, result.output
    return load_checkpoint(out / "run" / LAST)


def test_preset_lookup_and_unknown_names():
    assert preset(None) is PRESETS["default"] and preset("edge").quantize == "int8"
    with pytest.raises(ValueError, match="unknown preset 'tiny'; one of default, seed, edge"):
        preset("tiny")


@pytest.mark.slow
def test_edge_preset_builds_the_edge_model_and_is_saved(dataset, tmp_path):
    payload = cli_train(dataset, tmp_path, "--preset", "edge")
    model = payload["model_config"]
    assert {k: model[k] for k in PRESETS["edge"].model} == PRESETS["edge"].model
    assert payload["train_config"]["preset"] == "edge"


@pytest.mark.slow
def test_edge_preset_upscales_small_synthetic_images_unless_a_size_is_typed(dataset, tmp_path, monkeypatch):
    """The demo family's images are used whole at their own size; the edge preset takes them to its min_image_size
    (MobileNetV3's stem would leave their shapes a few pixels wide); a typed --image-size wins; the default preset
    keeps the images' own size. Not told their epochs, runs take the preset's min_epochs (MIN_STEPS made 1 here)."""
    monkeypatch.setattr("capkit.training.config.MIN_STEPS", 1)

    def crop(*extra: str) -> int:
        result = CliRunner().invoke(main, ["train", "--data", str(dataset), "--max-steps", "1",
                                           "--batch-size", "8", "--bleu-images", "0", "--no-progress", "--device",
                                           "cpu", "--out", str(tmp_path), "--name", "-".join(extra), *extra])
        assert result.exit_code == 0, result.output
        spec = load_checkpoint(tmp_path / "-".join(extra) / LAST)["preprocess"]
        assert spec["resize"] == spec["crop"]  # whole, no crop margin
        return spec["crop"]

    assert PRESETS["edge"].min_image_size == 128 > SIZE
    assert crop("--preset", "edge") == 128
    assert load_checkpoint(tmp_path / "--preset-edge" / LAST)["train_config"]["epochs"] == 12
    assert crop("--preset", "edge", "--image-size", "48") == 48
    assert crop("--preset", "default") == SIZE
    assert load_checkpoint(tmp_path / "--preset-default" / LAST)["train_config"]["epochs"] == 8


@pytest.mark.slow
def test_edge_preset_resizes_photos_to_240_before_its_224_crop(tmp_path):
    """On photos (a foreign COCO folder, no --image-size) the edge preset's resize replaces the
    backbone's 256; synthetic sets keep being used whole."""
    from capkit.training.synthetic import families

    photos = families()["objects"].generate(tmp_path / "objects", count=12, seed=0, image_size=64, progress=False)
    (photos / "meta.json").unlink()  # a foreign folder now: no family says how its images are read
    payload = cli_train(photos, tmp_path / "runs", "--preset", "edge", "--image-size", "64")
    assert payload["preprocess"]["resize"] == 64
    result = CliRunner().invoke(main, ["train", "--data", str(photos), "--preset", "edge", "--epochs", "1",
                                       "--max-steps", "1", "--batch-size", "4", "--bleu-images", "0", "--no-progress",
                                       "--device", "cpu", "--out", str(tmp_path / "runs"), "--name", "photos"])
    assert result.exit_code == 0, result.output
    spec = load_checkpoint(tmp_path / "runs" / "photos" / LAST)["preprocess"]
    assert (spec["resize"], spec["crop"]) == (PRESETS["edge"].resize, 224) == (240, 224)


@pytest.mark.slow
def test_typed_model_options_win_over_the_preset(dataset, tmp_path):
    model = cli_train(dataset, tmp_path, "--preset", "edge", "--hidden-dim", "64")["model_config"]
    assert model["hidden_dim"] == 64 and model["encoder"] == "mobilenet_v3_small" and model["embed_dim"] == 128


def test_library_preset_without_a_model_config_and_a_bad_name(dataset, tmp_path):
    base = dict(data=str(dataset), image_size=SIZE, epochs=1, max_steps=1, batch_size=8, bleu_images=0,
                progress=False, device="cpu", out=str(tmp_path), name="lib")
    with pytest.raises(TrainingError, match="unknown preset 'huge'"):
        train(TrainConfig(preset="huge", **base), status=lambda *_: None)
    result = train(TrainConfig(preset="edge", **base), status=lambda *_: None)
    assert load_checkpoint(result.run_dir / LAST)["model_config"]["encoder"] == "mobilenet_v3_small"


def test_unknown_preset_is_a_one_line_usage_error(dataset, tmp_path):
    result = CliRunner().invoke(main, ["train", "--preset", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'huge' is not one of" in result.output


def test_backbones_from_scratch_follow_their_batches():
    """torchvision builds MobileNetV3 with batch-norm momentum 0.01: from scratch it becomes 0.1."""
    import torch

    fresh = CaptionModel(CaptionModelConfig(vocab_size=5, encoder="mobilenet_v3_small", embed_dim=8, hidden_dim=8))
    momenta = {m.momentum for m in fresh.encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}


def test_backbones_with_given_weights_keep_their_momentum(tmp_path):
    import torch
    import torchvision

    weights = tmp_path / "mnv3.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    model = CaptionModel(CaptionModelConfig(vocab_size=5, encoder="mobilenet_v3_small", embed_dim=8, hidden_dim=8),
                         encoder_weights=weights)
    momenta = {m.momentum for m in model.encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.01}


@pytest.mark.slow
def test_export_writes_the_edge_presets_int8_bundle_unless_told_not_to(dataset, tmp_path):
    cli_train(dataset, tmp_path, "--preset", "edge")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(run), "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [v["precision"] for v in report["variants"]] == ["int8"]
    assert json.loads((run / "bundle-int8" / "capkit.json").read_text())["graphs"]
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(run), "--out", str(tmp_path / "plain"),
                                       "--quantize", "none", "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["variants"] == [] and not (tmp_path / "plain-int8").exists()


def test_a_typed_encoder_is_used_whole_under_the_default_preset(dataset, tmp_path):
    """The default preset cuts its ResNet-18 to three stages and 4 x 4 cells; a typed --encoder (here one that
    has no such stages) gets its whole backbone instead of a one-line refusal, unless the cut is typed too."""
    args = ["train", "--data", str(dataset), "--image-size", "32", "--epochs", "1", "--max-steps", "1",
            "--bleu-images", "0", "--out", str(tmp_path), "--no-progress", "--json", "--hidden-dim", "16",
            "--embed-dim", "8"]
    result = CliRunner().invoke(main, [*args, "--encoder", "mobilenet_v3_small", "--name", "whole"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "whole" / "config.json").read_text())["model"]
    assert saved["backbone_stages"] is None and saved["image_grid"] == 1 and saved["image_each_step"] is True
    result = CliRunner().invoke(main, [*args, "--encoder", "regnet_x_400mf", "--backbone-stages", "3"])
    assert result.exit_code == 1 and "regnet_x_400mf is neither" in result.output
