"""Per-epoch greedy BLEU-4 on a validation subset: in history.json, on loss.png, and the same figure
that `capkit eval` gives the saved checkpoint on those images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capkit.models import CaptionModelConfig
from capkit.training.checkpoint import LAST
from capkit.training.data import resolve_dataset
from capkit.training.evaluate import evaluate
from capkit.training.synthetic import fact_check, generate_synthetic
from capkit.training.torch_inference import checkpoint_captioner
from capkit.training.train import TrainConfig, plot_history, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", count=60, seed=3, image_size=SIZE,
                              progress=False)


def run(dataset: Path, out: Path, **kw):
    config = TrainConfig(**{**dict(data=str(dataset), image_size=SIZE, epochs=2, batch_size=16, out=str(out),
                                   name="run", progress=False, device="cpu"), **kw})
    return train(config, CaptionModelConfig(vocab_size=5, hidden_dim=32, embed_dim=16), status=lambda *_: None)


def test_history_has_the_greedy_bleu4_of_the_validation_subset(dataset, tmp_path):
    result = run(dataset, tmp_path, bleu_images=5)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [h["val_bleu_images"] for h in history] == [5, 5]
    assert all(0.0 <= h["val_bleu4"] <= 1.0 for h in history)
    # the last epoch's figure is what evaluating last.pt on the same 5 images gives
    _, splits = resolve_dataset(str(dataset), None, progress=False)
    report = evaluate(checkpoint_captioner(result.run_dir / LAST, device="cpu"), splits["val"][:5], (0.0,),
                      progress=False, ceiling=False, facts=fact_check(dataset, "val"))
    assert history[-1]["val_bleu4"] == pytest.approx(report[0].bleu4, abs=1e-9)
    # and the share of those captions stating their scene exactly right, as `capkit eval` computes it
    assert history[-1]["val_facts"] == report[0].facts["exact"]


def test_data_without_scenes_has_no_fact_accuracy(dataset, tmp_path):
    """A foreign folder (here: the synthetic set without its meta.json) records no scenes: absent, not zero."""
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(dataset, foreign)
    (foreign / "meta.json").unlink()
    assert fact_check(foreign, "val") is None
    result = run(foreign, tmp_path / "runs", epochs=1, bleu_images=5)
    assert "val_bleu4" in result.history[0] and "val_facts" not in result.history[0]


def test_bleu_images_zero_turns_it_off(dataset, tmp_path):
    result = run(dataset, tmp_path, epochs=1, bleu_images=0)
    assert "val_bleu4" not in result.history[0]


def test_more_images_than_the_split_has_are_capped(dataset, tmp_path):
    result = run(dataset, tmp_path, epochs=1, bleu_images=10_000)
    assert result.history[0]["val_bleu_images"] == 6  # 60 images, 10% validation


def test_the_plot_gets_a_bleu_panel_only_with_bleu(tmp_path):
    from PIL import Image

    base = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e} for e in (1, 2, 3)]
    plot_history(base, tmp_path / "loss.png", "t")
    plot_history([{**h, "val_bleu4": 0.1 * h["epoch"], "val_bleu_images": 48} for h in base],
                 tmp_path / "both.png", "t")
    assert Image.open(tmp_path / "both.png").width > Image.open(tmp_path / "loss.png").width
