"""Distillation (training/distill.py, `capkit train --teacher RUN`): the soft-target loss, a student of
another architecture learning its teacher's distributions, the one-line refusals, and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from capkit.cli import main
from capkit.models import CaptionModelConfig
from capkit.training.checkpoint import LAST, load_checkpoint, load_model
from capkit.training.data import resolve_dataset
from capkit.training.distill import soft_target_loss
from capkit.training.synthetic import generate_synthetic
from capkit.training.train import TrainConfig, train

IMAGE_SIZE = 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", count=60, seed=3, image_size=IMAGE_SIZE,
                              progress=False)


def run(dataset: Path, out: Path, name: str, model: CaptionModelConfig, **kw) -> Path:
    config = TrainConfig(**{"data": str(dataset), "image_size": IMAGE_SIZE, "epochs": 2, "batch_size": 16,
                            "out": str(out), "name": name, "progress": False, "device": "cpu", "bleu_images": 0, **kw})
    return train(config, model, status=lambda _: None).run_dir


def tiny(**kw) -> CaptionModelConfig:
    return CaptionModelConfig(**{"vocab_size": 5, "encoder": "resnet18", "embed_dim": 16, "hidden_dim": 32, **kw})


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory) -> Path:
    """A GRU teacher over ResNet-18 cells (another architecture than the students'), stopped early: its
    distributions are still broad, far from what the references alone teach."""
    return run(dataset, tmp_path_factory.mktemp("teacher"), "teacher", tiny(decoder="gru", image_grid=2, hidden_dim=48),
               epochs=1, max_steps=2)


def test_soft_target_loss_is_the_temperature_scaled_kl_over_real_tokens():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)  # (N, T, V)
    targets = torch.tensor([[5, 6, 0], [4, 0, 0]])  # 3 real tokens, padding 0
    expected = 0.0
    for n, t in [(0, 0), (0, 1), (1, 0)]:
        p = F.softmax(teacher[n, t] / 2.0, -1)
        expected += float((p * (p.log() - F.log_softmax(student[n, t] / 2.0, -1))).sum()) * 4.0
    assert soft_target_loss(student, teacher, targets, 0, 2.0).item() == pytest.approx(expected, rel=1e-5)
    assert soft_target_loss(teacher, teacher, targets, 0, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def mean_kl_to(teacher_run: Path, student_run: Path, dataset: Path) -> float:
    """KL(teacher || student) per real token over the validation captions, at temperature 1."""
    from capkit.training.data import CaptionedImages, collate

    teacher, vocab, spec, _ = load_model(teacher_run)
    student, _, _, _ = load_model(student_run)
    _, splits = resolve_dataset(str(dataset), progress=False)
    batch = collate([CaptionedImages(splits["val"], vocab, spec, 20)[i] for i in range(len(splits["val"]))])
    with torch.no_grad():
        kl = soft_target_loss(student(batch.images, batch.inputs, batch.owners),
                              teacher(batch.images, batch.inputs, batch.owners), batch.targets, vocab.pad_id, 1.0)
    return kl.item() / int((batch.targets != vocab.pad_id).sum())


@pytest.mark.slow
def test_a_student_of_another_architecture_learns_its_teachers_distributions(dataset, teacher, tmp_path):
    """MobileNetV3-Small + LSTM taught by ResNet-18 cells + GRU: with the teacher's soft targets alone
    (weight 1) the student ends nearer the teacher's word distributions than the same student trained on
    the references alone, same seed and steps."""
    student = tiny(encoder="mobilenet_v3_small")
    alone = run(dataset, tmp_path, "alone", student, epochs=8, lr=3e-3)
    taught = run(dataset, tmp_path, "taught", student, epochs=8, lr=3e-3, teacher=str(teacher), distill_weight=1.0,
                 distill_temperature=1.0)
    assert mean_kl_to(teacher, taught, dataset) < 0.5 * mean_kl_to(teacher, alone, dataset)
    saved = load_checkpoint(taught / LAST)["train_config"]
    assert saved["teacher"] == str((teacher / "best.pt").resolve()) and saved["distill_weight"] == 1.0


def cli_train(dataset: Path, out: Path, *args: str):
    return CliRunner().invoke(main, ["train", "--data", str(dataset), "--image-size", str(IMAGE_SIZE), "--epochs", "1",
                                     "--embed-dim", "16", "--hidden-dim", "32", "--bleu-images", "0", "--out", str(out),
                                     "--no-progress", "--device", "cpu", *args])


@pytest.mark.slow
def test_a_teacher_of_another_vocabulary_or_normalisation_is_refused_in_one_line(dataset, teacher, tmp_path):
    result = cli_train(dataset, tmp_path, "--name", "refused", "--teacher", str(teacher), "--min-count", "30")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: --teacher ") and "vocabulary" in lines[-1] and "only the teacher's" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    from capkit.runtime.preprocess import PreprocessSpec
    from capkit.training.distill import DistillationError, load_teacher

    _, vocab, spec, _ = load_model(teacher)
    other_mean = PreprocessSpec(resize=IMAGE_SIZE, crop=IMAGE_SIZE, mean=(0.5, 0.5, 0.5), std=spec.std)
    margin = PreprocessSpec(resize=56, crop=48, mean=spec.mean, std=spec.std)
    for student_spec, words in ((other_mean, "reads images otherwise: mean"), (margin, "only to images used whole")):
        with pytest.raises(DistillationError, match=words):
            load_teacher(str(teacher), vocab, student_spec, torch.device("cpu"))


@pytest.mark.slow
def test_a_teacher_of_another_size_reads_the_batch_resized_to_its_own(dataset, teacher, tmp_path):
    """Synthetic images are used whole: a student at --image-size 48 is taught by the 32-pixel teacher, which reads
    each batch resized to 32: its logits for a smooth scene sampled at 48 are near those for the same scene sampled
    at 32, far nearer than for another scene or for the 48-pixel batch read as it is."""
    from capkit.training.distill import load_teacher

    result = cli_train(dataset, tmp_path, "--name", "bigger", "--teacher", str(teacher), "--image-size", "48")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "bigger" / LAST)["preprocess"]["crop"] == 48
    _, vocab, spec, _ = load_model(teacher)
    taught = load_teacher(str(teacher), vocab, dataclasses.replace(spec, resize=48, crop=48), torch.device("cpu"))
    same = load_teacher(str(teacher), vocab, spec, torch.device("cpu"))
    assert taught.size == IMAGE_SIZE and same.size is None
    torch.manual_seed(0)
    scenes = torch.randn(2, 3, 4, 4) * 2  # (2, 3, 4, 4): two smooth scenes, sampled at either size below

    def sampled(side: int) -> torch.Tensor:
        return F.interpolate(scenes, size=(side, side), mode="bilinear", align_corners=True)  # (2, 3, side, side)

    inputs = torch.ones(2, 3, dtype=torch.long)  # (2, 3)
    at_32, at_48 = same.logits(sampled(32), inputs, None), taught.logits(sampled(48), inputs, None)  # (2, 3, V)
    resampled = (at_48 - at_32).abs().max()
    other_scene = (at_32[0] - at_32[1]).abs().max()
    unresized = (same.logits(sampled(48), inputs, None) - at_32).abs().max()  # the 48-pixel batch as it is
    assert resampled < 0.25 * other_scene and resampled < 0.25 * unresized, (resampled, other_scene, unresized)


@pytest.mark.slow
def test_resume_keeps_the_teacher_and_refuses_another(dataset, teacher, tmp_path):
    first = cli_train(dataset, tmp_path, "--name", "student", "--teacher", str(teacher), "--distill-weight", "0.7")
    assert first.exit_code == 0, first.output
    student = tmp_path / "student"
    resumed = CliRunner().invoke(main, ["train", "--resume", str(student), "--epochs", "2", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert f"distilled from {(teacher / 'best.pt').resolve()} (T 2, weight 0.7)" in resumed.stderr
    assert json.loads(resumed.stdout)["epochs"] == 2
    assert load_checkpoint(student / LAST)["train_config"]["teacher"] == str((teacher / "best.pt").resolve())
    other = CliRunner().invoke(main, ["train", "--resume", str(student), "--teacher", str(student)])
    assert other.exit_code != 0 and "--teacher cannot change when resuming" in other.stderr


def test_the_distillation_report_counts_the_students_within_the_goal():
    from capkit.reports import distill

    def row(seed, model, facts, bleu4, minutes=5.0, family="shapes"):
        return {"family": family, "seed": seed, "model": model, "args": "", "train_minutes": minutes, "facts": facts,
                "bleu4": bleu4, "cider": 1.0}

    rows = [row(0, "default (the teacher)", 0.99, 0.99, 7.0), row(0, "edge", 0.50, 0.90),
            row(0, "edge, distilled", 0.965, 0.965),  # 2.5 points and 0.025 below: within
            row(1, "default (the teacher)", 0.99, 0.99, 7.0), row(1, "edge", 0.50, 0.90),
            row(1, "edge, distilled", 0.95, 0.99),  # 4 points below: not within
            row(0, "default (the teacher)", 0.90, 0.90, 9.0, "objects"),  # another family's teacher of seed 0
            row(0, "edge, distilled", 0.89, 0.89, 9.5, "objects")]
    text = distill.render(rows, "cmd")
    assert text.startswith(distill.MARK_START) and text.endswith(distill.MARK_END)  # write_page replaces it in place
    assert "| demo | 0 | edge, distilled | 96.5% | 0.965 | 1.000 | 5.0 | yes |" in text
    assert "| demo | 1 | edge, distilled | 95.0% | 0.990 | 1.000 | 5.0 | no |" in text
    assert "| objects | 0 | edge, distilled | 89.0% | 0.890 | 1.000 | 9.5 | yes |" in text  # its own teacher's
    assert "edge, distilled: 1 of 2 seeds of the demo data within the goal." in text
    assert distill.verdict(row(0, "edge, distilled", 0.99, 0.99, minutes=10.5), rows[0]) == "no"  # too slow
    assert distill.verdict(row(0, "edge, distilled", 0.99, 0.99, minutes=30.0), rows[0], 8.0) == "yes"  # shared cores
    shared = [{**r, "train_minutes": 30.0} if r["model"] == "edge, distilled" else r for r in rows]
    assert "edge, distilled: 0 of 2 seeds" in distill.render(shared, "cmd")
    timed = distill.render([*shared, {**row(0, "edge, distilled", 0.97, 0.97, 8.0), "alone": True}], "cmd")
    assert "| demo | 0 | edge, distilled (timed alone) | 97.0% | 0.970 | 1.000 | 8.0 | yes |" in timed
    assert "edge, distilled: 1 of 2 seeds of the demo data within the goal." in timed  # seed 1: 4 points below
