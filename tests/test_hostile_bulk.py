"""Every case of the bulk runs' hostile corpus (tests/hostile_bulk.py) holds: an --out that is not capkit's is
refused untouched, bad listing lines and special files are error lines, each image is written once whatever its
name, a run killed or interrupted then rerun equals an uninterrupted one byte for byte; never a traceback or a
signal, under 1 GB and 30 s per process, and the good image beside each hostile input keeps its line."""

from __future__ import annotations


import pytest

pytest.importorskip("torch")


import hostile_bulk  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[list, list]:
    root = tmp_path_factory.mktemp("hostile-bulk")
    bundle = hostile_bulk.corpus.tiny_bundle(root / "bundle")
    try:
        yield hostile_bulk.run_corpus(root, bundle)
    finally:
        hostile_bulk.remove_tree(root)  # glob-deep is deeper than pytest's cleanup (shutil.rmtree) can recurse


def test_every_case_holds(results) -> None:
    cases, outcomes = results
    broken = [f"{c.name!r}: {'; '.join(r.problems)} (stderr: {r.outcomes[-1].stderr.strip()[-200:]!r})"
              for c, r in zip(cases, outcomes) if r.problems]
    assert not broken, "\n".join(broken)


def test_the_corpus_covers_each_class(results) -> None:
    cases, outcomes = results
    summary = hostile_bulk.summary(cases, outcomes)
    assert summary["tried"] >= 45 and summary["results lost"] == 0
    assert {c.group for c in cases} == {"output", "names", "listing", "glob", "input", "interrupt"}
    assert summary["refused cleanly"] == summary["hostile"]
    assert summary["max peak MB"] <= hostile_bulk.PEAK_MB
