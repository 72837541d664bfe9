"""The measured report pages in docs/: each script of reports/ finds its page there with its markers, the
README's links to docs/ lead to pages that exist, and no page (nor the README) names a folder of the machine
that measured it (a reader has none of them: a page shows commands and paths relative to the repository)."""

from __future__ import annotations

import re

import pytest

from capkit.reports import (bulk, cuda_throughput, edge, fact_accuracy, js_speed, phone_photos, seed_config, seed_sweep,
                            serve, vs_openvino)
from capkit.reports.common import DOCS, REPO

PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("script", [bulk, cuda_throughput, edge, fact_accuracy, js_speed, phone_photos, seed_config,
                                    seed_sweep, serve, vs_openvino],
                         ids=lambda m: m.__name__)
def test_each_report_script_has_its_page_in_docs_with_one_marked_section(script):
    text = script.PAGE.read_text()
    assert script.PAGE.parent == DOCS and text.startswith("# ")
    assert text.count(script.MARK_START) == 1 and text.count(script.MARK_END) == 1
    assert text.index(script.MARK_START) < text.index(script.MARK_END)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_names_a_folder_of_the_measuring_machine(page):
    assert re.findall(r"(?:/tmp/|/root/|/home/)\S*", page.read_text()) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_lead_to_files_that_exist(page):
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())
    missing = [link for link in links if not (page.parent / link).exists()]
    assert missing == []


def test_fact_accuracy_section_and_plot(tmp_path):
    """The candidates' table (each row's facts, shapes, colours, training minutes and command) and the plot of
    validation fact accuracy against cumulative training minutes."""
    facts = {"exact": 0.535, "objects": 0.535, "sizes": 0.98, "colours": 0.827, "shapes": 0.613}
    rows = [{"name": name, "train": "capkit train --seed 0 " + " ".join(options), "bleu4": 0.849, "facts": facts,
             "minutes": 6.0, "curve": [(50.0, None), (50.0, 0.25), (50.0, 0.5)]}
            for name, _, options in fact_accuracy.CANDIDATES]
    text = fact_accuracy.section(rows, "CMD")
    assert text.startswith(fact_accuracy.MARK_START) and text.endswith(fact_accuracy.MARK_END)
    assert "| old default | ResNet-18, global pooling, the image as the first step only | 0.849 | 53.5% | 61.3% | 82.7% | 6.0 |" in text
    assert "- old default: `capkit train --seed 0 --image-first-only --backbone-stages 4 --image-grid 1`" in text
    plot = tmp_path / "facts.png"
    fact_accuracy.plot(rows, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
