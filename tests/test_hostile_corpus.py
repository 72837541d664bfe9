"""Every case of the hostile-input corpus (tests/hostile_corpus.py) holds: a one-line error or a
caption, never a traceback or a signal, under 1 GB and 30 s per process, and the good image beside
each hostile one keeps its caption."""

from __future__ import annotations


import pytest

pytest.importorskip("torch")


import hostile_corpus  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[list, list]:
    root = tmp_path_factory.mktemp("hostile")
    bundle = hostile_corpus.tiny_bundle(root / "bundle")
    return hostile_corpus.run_corpus(root, bundle)


def test_every_case_holds(results) -> None:
    cases, outcomes = results
    broken = [f"{c.name!r}: {'; '.join(o.problems)} (stderr: {o.stderr.strip()[:200]!r})"
              for c, o in zip(cases, outcomes) if o.problems]
    assert not broken, "\n".join(broken)


def test_the_corpus_covers_each_class(results) -> None:
    cases, outcomes = results
    summary = hostile_corpus.summary(cases, outcomes)
    assert summary["tried"] >= 60 and summary["results lost"] == 0
    assert {c.group for c in cases} == {"image", "option", "manifest"}
    assert summary["refused cleanly"] == summary["hostile"]
