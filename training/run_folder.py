"""What a training run writes into its folder besides the checkpoints: ``config.json`` once, at the
start; ``history.json`` and its plot ``loss.png`` after every epoch; and the ``runs/latest`` link to
the newest run. Every file is written to a temporary name and renamed, so a reader never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.json"
PLOT_FILE = "loss.png"
CONFIG_FILE = "config.json"


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def link_latest(run_dir: Path) -> None:
    """Points ``latest`` beside ``run_dir`` at it (a relative link, replaced atomically)."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, latest)


def start_run_folder(run_dir: Path, config: dict[str, Any]) -> None:
    """Makes ``run_dir``, writes its ``config.json`` (``config``: what the run was started with) and
    points ``latest`` at it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, config)
    link_latest(run_dir)


def write_history(run_dir: Path, history: list[dict[str, Any]], title: str) -> None:
    """The run's history so far as ``history.json`` and as the plot ``loss.png`` (titled ``title``)."""
    write_json(run_dir / HISTORY_FILE, history)
    plot_history(history, run_dir / PLOT_FILE, title)


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train and validation loss per epoch (the seed's Figures 2-4), and beside them the greedy
    BLEU-4 of the validation subset when the history has it (``val_bleu4``), with the share of its
    captions stating their scene exactly right on synthetic data (``val_facts``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    scored = [(h["epoch"], h["val_bleu4"]) for h in history if h.get("val_bleu4") is not None]
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(11 if scored else 6, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if scored:
        bleu = axes[0][1]
        bleu.plot([e for e, _ in scored], [b for _, b in scored], marker="o", color="tab:green", label="BLEU-4")
        facts = [(h["epoch"], h["val_facts"]) for h in history if h.get("val_facts") is not None]
        if facts:
            bleu.plot([e for e, _ in facts], [f for _, f in facts], marker="s", color="tab:purple",
                      label="facts exactly right")
            bleu.legend()
        bleu.set_xlabel("epoch")
        bleu.set_ylabel("greedy captions")
        bleu.set_ylim(0, 1)
        bleu.set_title(f"validation subset ({history[-1].get('val_bleu_images', '?')} images)")
        bleu.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


__all__ = ["CONFIG_FILE", "HISTORY_FILE", "PLOT_FILE", "link_latest", "plot_history", "start_run_folder",
           "write_history", "write_json"]
