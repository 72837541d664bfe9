"""reports/edge.py's pure parts: reading a bench report, marking the goals, rendering the markdown and
placing it in its page, docs/edge.md. Nothing is timed here (the script measures; these check what it says about it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capkit.reports import edge
from capkit.reports.common import REPO, replace_section, shown_path, write_page

DEMO_DATA = str(Path.home() / ".cache" / "capkit" / "demo")  # a measuring machine's path: shown as ~/...


def fig(size_mb: float = 7.3, caption_ms: float = 9.7, **extra: float) -> dict:
    return {"size_mb": size_mb, "cold_start_s": 0.5, "peak_rss_mb": 93.0, "caption_ms": caption_ms,
            "caption_p90_ms": caption_ms + 0.5, "preprocess_ms": 4.6, "encoder_ms": 2.6, "decode_ms": 2.5,
            "steps": 20.0, "threads": {"encoder": 1, "decoder_step": 1}, **extra}


def measured(edge_bleu: float, default_bleu: float) -> dict:
    def scores(run: str, bleu: float) -> dict:
        return {"bleu4": bleu, "cider": 1.5, "images": 480, "data": DEMO_DATA, "split": "test", "run": run,
                "model": "m"}
    return {"status": "measured", "scores": {"edge": scores("runs/e", edge_bleu), "default": scores("runs/d", default_bleu)},
            "commands": ["capkit eval --checkpoint runs/e", "capkit eval --checkpoint runs/d"]}


PENDING = {"status": "pending", "reason": "needs trained runs"}


def test_goals_met_missed_and_pending_at_their_thresholds():
    rows = edge.goals({"edge int8": fig(7.3, 9.7), "edge fp32": fig(22.6, 17.0)}, PENDING)
    assert [r["met"] for r in rows] == [True, True, None]
    assert "7.30 MB (fp32 22.60 MB)" in rows[0]["measured"]
    assert "9.70 ms" in rows[1]["measured"] and "preprocess 4.60 + encoder 2.60 + decode 2.50" in rows[1]["measured"]
    assert rows[2]["measured"] == "pending" and rows[2]["reason"] == "needs trained runs"
    # "under" 8 MB and 12 ms: the threshold itself misses
    rows = edge.goals({"edge int8": fig(edge.SIZE_GOAL_MB, edge.LATENCY_GOAL_MS)}, PENDING)
    assert [r["met"] for r in rows[:2]] == [False, False]
    rows = edge.goals({"edge int8": fig(7.999, 11.99)}, PENDING)
    assert [r["met"] for r in rows[:2]] == [True, True]


@pytest.mark.parametrize("edge_bleu, default_bleu, met", [
    (0.50, 0.53, True),  # exactly 0.03 below (0.50 - 0.53 is -0.030000000000000027 in floats)
    (0.4999, 0.53, False),  # 0.0301 below
    (0.60, 0.53, True),  # better than the default
    (0.53, 0.53, True),
])
def test_bleu_goal_is_at_most_its_tolerance_below_the_default(edge_bleu, default_bleu, met):
    row = edge.goals({"edge int8": fig()}, measured(edge_bleu, default_bleu))[2]
    assert row["met"] is met
    assert f"delta {edge_bleu - default_bleu:+.4f}" in row["measured"] and "480 images" in row["measured"]


def report_with(bundles: dict) -> dict:
    targets = [{"name": f"onnx {k.split()[1]}", "source": str(path), "size_bytes": 7_300_000 if "edge" in k else 41e6,
                "cold_start": {"wall": {"median": 0.5, "p90": 0.6}, "peak_rss_mb": 93.0},
                "caption_ms": {"median": 9.7 if "edge" in k else 31.0, "p90": 10.2},
                "preprocess_ms": {"median": 4.6, "p90": 4.8}, "encoder_ms": {"median": 2.6, "p90": 2.7},
                "decode_ms": {"median": 2.5, "p90": 2.6}, "steps": 20.0, "threads": {"encoder": 1}}
               for k, path in bundles.items()]
    return {"machine": {"cpu": "Test CPU", "cores": 2, "load_average": [0.1, 0.2, 0.3], "versions": {"python": "3"}},
            "load_after": [0.2, 0.2, 0.3], "targets": targets}


def test_figures_match_targets_by_bundle_folder_not_name(tmp_path):
    # bench names all six targets "onnx fp32" / "onnx int8": only the folder tells the presets apart
    bundles = {edge.key(p, q): tmp_path / p / ("bundle-int8" if q == "int8" else "bundle")
               for p in edge.PRESET_NAMES for q in edge.EDGE_PRECISIONS}
    report = report_with(bundles)
    report["targets"].reverse()
    figs = edge.figures(report, bundles)
    assert set(figs) == set(bundles)
    assert figs["edge int8"]["size_mb"] == pytest.approx(7.3) and figs["seed int8"]["caption_ms"] == 31.0
    assert figs["edge int8"]["cold_start_s"] == 0.5 and figs["edge int8"]["peak_rss_mb"] == 93.0


def render(bleu: dict) -> str:
    bundles = {edge.key(p, q): f"/b/{p}-{q}" for p in edge.PRESET_NAMES for q in edge.EDGE_PRECISIONS}
    figs = edge.figures(report_with(bundles), bundles)
    figs["edge fp32"]["caption_ms"] = 17.0
    specs = {p: {"resize": 256, "crop": 224} for p in edge.PRESET_NAMES}
    return edge.render(report_with(bundles), figs, edge.goals(figs, bleu), ["capkit", "bench", "--threads", "1"], bleu,
                       120.0, specs, "reports/edge.py --edge-resize 240")


def test_render_has_markers_goals_reference_and_one_row_per_bundle():
    text = render(PENDING)
    lines = text.split("\n")
    assert lines[0] == edge.MARK_START and lines[-1] == edge.MARK_END
    assert "Reproduce: `reports/edge.py --edge-resize 240`" in text
    assert "`capkit bench --threads 1`" in text and "2 min here" in text
    goal_rows = [line for line in lines if line.startswith("| (")]
    assert [row.rsplit("|", 2)[1].strip() for row in goal_rows] == ["met", "met", "pending"]
    assert "- (c) needs trained runs" in lines
    # the reference: the seed preset's int8 caption against the figure, and the ratio from the figures shown
    assert "31.00 ms on one thread" in text and f"about {edge.SEED_REFERENCE_MS} ms" in text and "3.2x less" in text
    rows = [line for line in lines if line.startswith(("| edge |", "| default |", "| seed |"))]
    assert len(rows) == 6
    assert rows[0] == "| edge | int8 | 7.30 | 0.50 | 93 | 9.70 (10.20) | 4.60 | 2.60 | 2.50 (20) |"
    assert rows[1].startswith("| edge | fp32 |") and "| 17.00 (10.20) |" in rows[1]
    assert "| trained run |" not in text and "BLEU-4: `" not in text  # no BLEU table while pending


def test_render_marks_a_missed_goal_and_shows_the_bleu_table():
    text = render(measured(0.40, 0.53))
    assert "| **missed** |" in text and "delta -0.1300" in text
    assert "| edge: runs/e | m | ~/.cache/capkit/demo (test) | 480 | 0.4000 | 1.5000 |" in text
    assert "`capkit eval --checkpoint runs/e` and `capkit eval --checkpoint runs/d`" in text


PAGE_TEXT = "# The edge preset\n\nWhat it measures.\n\n<!-- edge:start -->\nold\n<!-- edge:end -->\n\nHistory.\n"


def test_page_section_is_replaced_in_place_and_the_page_text_kept(tmp_path):
    page = tmp_path / "edge.md"
    page.write_text(PAGE_TEXT)
    write_page(page, "unused", edge.MARK_START, edge.MARK_END, f"{edge.MARK_START}\nv1\nmore\n{edge.MARK_END}")
    assert page.read_text() == PAGE_TEXT.replace("\nold\n", "\nv1\nmore\n")
    write_page(page, "unused", edge.MARK_START, edge.MARK_END, f"{edge.MARK_START}\nv1\nmore\n{edge.MARK_END}")
    assert page.read_text() == PAGE_TEXT.replace("\nold\n", "\nv1\nmore\n")  # the same section twice: no change


def test_a_missing_page_is_created_under_its_title_and_a_page_without_markers_gets_the_section_at_its_end(tmp_path):
    page = tmp_path / "new.md"
    section = f"{edge.MARK_START}\nv1\n{edge.MARK_END}"
    write_page(page, "The edge preset, measured", edge.MARK_START, edge.MARK_END, section)
    assert page.read_text() == f"# The edge preset, measured\n\n{edge.MARK_START}\nv1\n{edge.MARK_END}\n"
    page.write_text("# Edge\n\nprose\n\n")
    write_page(page, "unused", edge.MARK_START, edge.MARK_END, f"{edge.MARK_START}\nv2\n{edge.MARK_END}")
    assert page.read_text() == f"# Edge\n\nprose\n\n{edge.MARK_START}\nv2\n{edge.MARK_END}\n"


def test_shown_paths_name_no_folder_of_the_measuring_machine():
    assert shown_path(REPO / "reports" / ".cache" / "edge") == "reports/.cache/edge"
    assert shown_path(Path.home() / ".cache" / "capkit" / "x") == "~/.cache/capkit/x"
    assert shown_path("/tmp/demo/runs/latest/best.pt") == ".../runs/latest/best.pt"
    assert shown_path("runs/latest") == "runs/latest"  # relative: as typed


def test_replace_section_needs_both_markers():
    assert replace_section("a <!-- x --> b", "<!-- x -->", "<!-- y -->", "new") is None
    assert replace_section("a <!-- x --> old <!-- y --> b", "<!-- x -->", "<!-- y -->", "<!-- x -->new<!-- y -->") \
        == "a <!-- x -->new<!-- y --> b"
