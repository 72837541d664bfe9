#!/usr/bin/env python
"""Which model states the demo's scenes right? The candidates of the fact-accuracy work, side by side.

    .venv/bin/python reports/fact_accuracy.py            # trains each candidate once (minutes each); writes docs/fact-accuracy.md
    .venv/bin/python reports/fact_accuracy.py --print    # the same, printed

Each candidate is plain `capkit train` on the demo data (seed 0, every other option at its default),
with the model options that make it that candidate, then `capkit eval` on the test split: greedy BLEU-4
and fact accuracy (the share of captions stating their scene exactly right, and the shapes and colours
apart). The old default is the model before this work (the whole ResNet-18, globally pooled, the image as
the first step only); the winner is today's default. The plot draws each run's per-epoch fact accuracy on
its validation subset (history.json's ``val_facts``) against its training minutes, so a reader sees what a
longer run buys. Runs are kept under reports/.cache/fact-accuracy/ and reused by the next call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repository's parent makes `capkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capkit.reports.common import DOCS, REPO, capkit, publish, run_json, say, start_report  # noqa: E402

WORK = REPO / "reports" / ".cache" / "fact-accuracy"
PAGE = DOCS / "fact-accuracy.md"
PAGE_TITLE = "Fact accuracy: what each candidate model gets right"
PLOT = DOCS / "fact-accuracy.png"
MARK_START, MARK_END = "<!-- facts:start -->", "<!-- facts:end -->"
SEED = 0
# (name, what it changes, the options of `capkit train`): the old default first, today's default last. The
# recipe (epochs, lr ...) is today's default for both: what the model alone changes.
CANDIDATES = (
    ("old default", "ResNet-18, global pooling, the image as the first step only",
     ["--image-first-only", "--backbone-stages", "4", "--image-grid", "1"]),
    ("today's default", "three stages, 4 x 4 cells, the image at every step", []),
)


def train_and_score(name: str, options: list[str], data: str) -> dict[str, Any]:
    """One candidate: trained once (reused when its run folder is complete), then scored on the test split."""
    run = WORK / name.replace(" ", "-").replace("'", "")
    command = capkit("train", "--data", data, "--seed", str(SEED), "--out", str(WORK), "--name", run.name,
                     "--no-progress", "--json", *options)
    if not (run / "history.json").is_file() or not (run / "best.pt").is_file():
        run_json(command, f"training {name}")
    scores = run_json(capkit("eval", "--checkpoint", str(run), "--data", data, "--no-progress", "--json"),
                      f"evaluating {name}")["results"][0]
    history = json.loads((run / "history.json").read_text())
    shown = ["capkit", "train", "--seed", str(SEED), *options]  # on the demo data: what `capkit train` reads by default
    return {"name": name, "train": " ".join(shown), "bleu4": scores["bleu4"], "facts": scores["facts"],
            "minutes": round(sum(h["seconds"] for h in history) / 60, 2),
            "curve": [(h["seconds"], h.get("val_facts")) for h in history]}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Validation fact accuracy per epoch against cumulative training minutes, one line per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for row in rows:
        minutes, shares, total = [], [], 0.0
        for seconds, share in row["curve"]:
            total += seconds / 60
            if share is not None:
                minutes.append(total)
                shares.append(share)
        ax.plot(minutes, shares, marker="o", label=row["name"])
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("validation captions exactly right")
    ax.set_ylim(0, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Demo data, seed 0: facts right after each epoch")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def section(rows: list[dict[str, Any]], command: str) -> str:
    lines = [MARK_START, "", f"```\n{command}\n```", "",
             "| candidate | what changes | greedy BLEU-4 | facts exactly right | shapes | colours | training min |",
             "|---|---|---|---|---|---|---|"]
    changes = {name: what for name, what, _ in CANDIDATES}
    for r in rows:
        f = r["facts"]
        lines.append(f"| {r['name']} | {changes[r['name']]} | {r['bleu4']:.3f} | {f['exact']:.1%} | {f['shapes']:.1%} | "
                     f"{f['colours']:.1%} | {r['minutes']:.1f} |")
    lines += ["", "Each row's training command:", ""] + [f"- {r['name']}: `{r['train']}`" for r in rows]
    lines += ["", f"![Validation fact accuracy against training minutes]({PLOT.name})", "", MARK_END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="the demo data folder [default: `capkit data synthetic`'s]")
    args, started, saved = start_report(parser, PAGE, WORK)
    command = ".venv/bin/python reports/fact_accuracy.py"
    if saved is not None:
        rows = saved["rows"]
    else:
        data = args.data or run_json(capkit("data", "synthetic", "--json"), "the demo data")["path"]
        rows = [train_and_score(name, options, data) for name, _, options in CANDIDATES]
    plot(rows, PLOT)
    publish(args, PAGE, PAGE_TITLE, MARK_START, MARK_END, section(rows, command), {"rows": rows})
    say(f"done in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
