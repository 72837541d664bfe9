"""`capkit eval`'s ceiling: the references scored against each other (leave one out), so a weak model
can be told from a hard dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from capkit.cli import main
from capkit.models import CaptionModelConfig
from capkit.training.datasets import CaptionedImage
from capkit.training.evaluate import (CEILING_LABEL, EvalReport, EvalResult, format_table, reference_ceiling,
                                      score_captions)
from capkit.training.synthetic import generate_synthetic
from capkit.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def image(image_id: str, *captions: str) -> CaptionedImage:
    return CaptionedImage(Path("/nowhere") / f"{image_id}.png", tuple(captions), image_id)


def test_identical_references_reach_the_top():
    ceiling = reference_ceiling([image("1", *["a red circle on a black background"] * 3),
                                 image("2", *["a small blue square at the top"] * 3)])
    assert set(ceiling) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    for name in ("bleu1", "bleu2", "bleu3", "bleu4"):
        assert ceiling[name] == pytest.approx(1.0, abs=1e-6)
    assert ceiling["cider"] > 1.0


def test_disjoint_references_score_near_zero():
    ceiling = reference_ceiling([image("1", "a red circle", "blue square there", "green triangle here"),
                                 image("2", "one yellow star", "two purple dots", "some orange lines")])
    assert all(value < 1e-6 for value in ceiling.values())


def test_bleu1_by_hand():
    """Image 1: each reference shares "a" (and "a b" for the first two) with the others; image 2's first
    three references are identical; its fourth ("zz") is past the smallest count (3), so it is never a
    hypothesis, but it stays among the references the others are scored against.
    k=0: hypotheses "a b c d" and "q r s t": clipped unigram matches 2 + 4 of 8 -> 0.75;
    k=1: "a b x y" and "q r s t": 2 + 4 of 8 -> 0.75; k=2: "a z w v": 1 + 4 of 8 -> 0.625.
    All lengths are 4 (no brevity penalty): BLEU-1 = (0.75 + 0.75 + 0.625) / 3."""
    records = [image("1", "a b c d", "a b x y", "a z w v"), image("2", "q r s t", "q r s t", "q r s t", "zz")]
    ceiling = reference_ceiling(records)
    assert ceiling["bleu1"] == pytest.approx((0.75 + 0.75 + 0.625) / 3, abs=1e-6)
    # the average over k of score_captions, the same scorers
    others = ["q r s t", "q r s t", "zz"]
    by_k = [score_captions({"1": ["a b x y", "a z w v"], "2": others}, {"1": "a b c d", "2": "q r s t"}),
            score_captions({"1": ["a b c d", "a z w v"], "2": others}, {"1": "a b x y", "2": "q r s t"}),
            score_captions({"1": ["a b c d", "a b x y"], "2": others}, {"1": "a z w v", "2": "q r s t"})]
    for name in ceiling:
        assert ceiling[name] == pytest.approx(sum(s[name] for s in by_k) / 3)


def test_one_reference_has_no_ceiling():
    assert reference_ceiling([image("1", "a red circle"), image("2", "a blue square")]) is None
    assert reference_ceiling([image("1", "a red circle", "one red circle"), image("2", "a blue square")]) is None
    assert reference_ceiling([]) is None


def test_the_table_row():
    results = [EvalResult(temperature=0.0, bleu1=0.5, bleu2=0.4, bleu3=0.3, bleu4=0.2, cider=1.0, images=2)]
    ceiling = {"bleu1": 0.9, "bleu2": 0.8, "bleu3": 0.7, "bleu4": 0.6, "cider": 2.5}
    table = format_table(EvalReport(results, ceiling)).splitlines()
    assert len(table) == 3 and table[-1].split() == ["references", "(ceiling)", "0.900", "0.800", "0.700", "0.600",
                                                     "2.500"]
    assert table[1].split() == ["0", "(greedy)", "0.500", "0.400", "0.300", "0.200", "1.000"]
    plain = format_table(results)  # a plain list, as before: no ceiling row, the old layout
    assert CEILING_LABEL not in plain and plain.splitlines()[0].startswith("Temperature")


@pytest.mark.slow
def test_eval_cli_shows_the_ceiling(tmp_path):
    data = generate_synthetic(tmp_path / "synthetic", count=30, seed=1, image_size=32, progress=False)
    result = train(TrainConfig(data=str(data), image_size=32, epochs=1, batch_size=16, out=str(tmp_path), name="run",
                               progress=False, device="cpu"),
                   CaptionModelConfig(vocab_size=5, encoder="resnet18", hidden_dim=32, embed_dim=16), status=lambda *_: None)
    runner = CliRunner()
    out = runner.invoke(main, ["eval", "--checkpoint", str(result.run_dir), "--no-progress", "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert set(report["ceiling"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert 0 < report["ceiling"]["bleu1"] <= 1
    facts = report["results"][0]["facts"]  # synthetic data: fact accuracy, each kind of fact apart
    assert list(facts) == ["exact", "objects", "sizes", "colours", "shapes", "background", "position"]
    assert all(0.0 <= v <= 1.0 for v in facts.values()) and facts["exact"] <= min(facts["objects"], facts["shapes"])
    text = runner.invoke(main, ["eval", "--checkpoint", str(result.run_dir), "--no-progress", "--device", "cpu"])
    assert text.exit_code == 0, text.output
    last = text.stdout.strip().splitlines()[-1]
    assert last.startswith(CEILING_LABEL) and f"{report['ceiling']['bleu4']:.3f}" in last
    assert text.stdout.splitlines()[0].split()[-7:] == ["facts", "objects", "sizes", "colours", "shapes", "background",
                                                        "position"]
    assert "exactly right" in text.stderr
