"""The seed sweep's own logic (reports/seed_sweep.py): the colour probe, what counts as landed,
the table, and the blocks of each family in its page, docs/seed-sweep.md. The sweep itself is a benchmark,
not a test."""

from __future__ import annotations

import pytest

from capkit.reports import seed_sweep

COLOURS = ("red", "blue", "green")


def test_colour_accuracy_compares_the_colours_named_as_a_multiset():
    references = {1: ["a red circle and a blue star", "two shapes"], 2: ["a green square"], 3: ["a red square"]}
    captions = {1: "a blue star and a red circle", 2: "a red square", 3: "a red red square"}
    assert seed_sweep.colour_accuracy(captions, references, COLOURS) == pytest.approx(1 / 3)
    assert seed_sweep.colour_accuracy({}, references, COLOURS) == 0.0


def row(**kw):
    base = {"family": "shapes", "seed": 0, "final_val_loss": 0.27, "bleu4": 0.876, "ceiling_bleu4": 0.9,
            "colour_accuracy": [0.2, 0.5, 0.7, 0.8], "train_minutes": 6.2}
    return {**base, **kw}


def test_landed_uses_bleu4_on_the_demo_family_and_the_ceiling_on_others():
    assert seed_sweep.landed(row(bleu4=0.80)) and not seed_sweep.landed(row(bleu4=0.7999))
    assert seed_sweep.landed(row(family="objects", bleu4=0.51, ceiling_bleu4=0.6))  # 0.85 x 0.6 = 0.51
    assert not seed_sweep.landed(row(family="objects", bleu4=0.50, ceiling_bleu4=0.6))
    assert not seed_sweep.landed(row(family="objects", bleu4=0.5, ceiling_bleu4=None))


def test_table_counts_the_seeds_that_landed():
    text = seed_sweep.table([row(), row(seed=1, bleu4=0.626, colour_accuracy=[0.2, 0.3])])
    assert "| 1 | 0.270 | 0.626 | 0.900 | 0.70 | never | 30% | 6.2 | **no** |" in text
    assert text.endswith("1 of 2 seeds landed (greedy BLEU-4 >= 0.8).")


def test_colours_are_learned_at_the_first_epoch_over_the_threshold():
    assert seed_sweep.colours_learned(row(colour_accuracy=[0.1, 0.75, 0.6, 0.9])) == 2
    assert seed_sweep.colours_learned(row(colour_accuracy=[0.1, 0.74])) is None


def test_parse_seeds():
    assert seed_sweep.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]


def test_each_family_has_its_own_block_in_the_page(tmp_path, monkeypatch):
    page = tmp_path / "seed-sweep.md"
    page.write_text("# x\n\nbefore\n")
    monkeypatch.setattr(seed_sweep, "PAGE", page)
    seed_sweep.write_block("shapes", "shapes one")
    seed_sweep.write_block("objects", "objects one")
    seed_sweep.write_block("shapes", "shapes two")
    text = page.read_text()
    assert text.startswith("# x\n\nbefore\n") and "shapes one" not in text
    assert text.index("shapes two") < text.index("objects one") < text.index(seed_sweep.MARK_END)


def test_a_missing_page_is_created_under_its_title(tmp_path, monkeypatch):
    page = tmp_path / "seed-sweep.md"
    monkeypatch.setattr(seed_sweep, "PAGE", page)
    seed_sweep.write_block("objects", "objects one")
    assert page.read_text() == (f"# {seed_sweep.PAGE_TITLE}\n\n{seed_sweep.MARK_START}\n<!-- sweep:objects:start -->\n"
                                f"objects one\n<!-- sweep:objects:end -->\n{seed_sweep.MARK_END}\n")


def test_table_shows_the_facts_column_only_when_rows_have_facts():
    facts = {"exact": 0.5, "objects": 0.627, "colours": 1.0, "kinds": 0.63, "backdrop": 0.213}
    good = {**facts, "exact": 0.96}
    text = seed_sweep.table([row(family="objects", bleu4=0.622, ceiling_bleu4=0.587, facts=facts),
                             row(family="objects", bleu4=0.622, ceiling_bleu4=0.587, facts=good)])
    assert "| 50% / 63% / 100% / 63% / 21% | 6.2 | yes |" in text
    assert "exact / objects / colours / kinds / backdrop" in text
    assert "0 of 2 seeds meet the fact goal (test captions right: objects 90%, backdrop 85% at least)." in text
    better = {**good, "objects": 0.91, "backdrop": 0.86}
    assert "1 of 1 seeds meet the fact goal" in seed_sweep.table([row(family="objects", facts=better)])
    demo = seed_sweep.table([row(facts={"exact": 0.95, "shapes": 0.95}), row(facts={"exact": 0.949})])
    assert "1 of 2 seeds meet the fact goal (test captions right: the whole scene 95% at least)." in demo
    assert "backdrop" not in seed_sweep.table([row()])


def test_facts_with_a_bad_checkpoint_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "objects"
    (folder / "annotations").mkdir(parents=True)
    (folder / "annotations" / "captions_test.json").write_text('{"images": [], "annotations": []}')
    monkeypatch.setattr(seed_sweep, "family_data", lambda family, seed, progress: str(folder))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for checkpoint in (tmp_path / "missing.pt", tmp_path / "junk.pt"):
        with pytest.raises(SystemExit) as stop:
            seed_sweep.main(["--family", "objects", "--seeds", "0", "--facts", str(checkpoint)])
        err = capsys.readouterr().err
        assert stop.value.code == 1 and str(checkpoint) in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_facts_are_checked_on_the_demo_set_too(export_kit, tmp_path):
    """The demo family trains on `capkit train`'s own synthetic set (no --data folder): its facts are read
    from that set's recorded scenes, not reported as absent."""
    checkpoint = export_kit.checkpoint(tmp_path / "tiny.pt")
    facts = seed_sweep.facts_right("shapes", 0, checkpoint)
    assert facts is not None and set(facts) >= {"exact", "shapes", "colours", "sizes"}
    assert all(0.0 <= share <= 1.0 for share in facts.values())
