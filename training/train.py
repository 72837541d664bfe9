"""Training's entry point: :func:`train` sets up a :class:`~capkit.training.run.TrainingRun` and
drives it epoch by epoch (per-epoch validation loss and perplexity, greedy BLEU-4 on a validation
subset, best/last checkpoints written atomically, resume, early stopping, max steps, Ctrl-C), writes
the run folder as it goes (:mod:`capkit.training.run_folder`), and judges the finished run against a
unigram model of its captions (:func:`stall_warning`)."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from capkit.models import CaptionModelConfig
from capkit.runtime.errors import Status
from capkit.runtime.vocab import PAD_ID, START_ID
from capkit.training import log_to_stderr
from capkit.training.checkpoint import BEST, LAST
from capkit.training.config import TrainConfig
from capkit.training.data import encode_caption
from capkit.training.run import RESUME_OVERRIDES, TrainingError, TrainingRun, learning_rate
from capkit.training.run_folder import plot_history, start_run_folder, write_history

STALL_EPOCHS = 3  # epochs without a better validation loss that make a run "stalled"

EpochHook = Callable[[TrainingRun, dict[str, Any]], None]  # on_epoch(run, history entry): see train()


@dataclass
class TrainResult:
    run_dir: Path  # the run folder: checkpoints, config.json, history.json, loss.png
    epochs: int  # epochs completed, those of an earlier run resumed included
    best_val_loss: float  # the lowest validation loss, the one best.pt holds
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch (history.json)
    skipped_images: int = 0  # unreadable images left out
    stopped: str = "completed"  # completed | early-stopping | max-steps | interrupted
    overridden: dict[str, Any] = field(default_factory=dict)  # a resumed run's options that differ from its saved ones
    warnings: list[str] = field(default_factory=list)  # e.g. the stall warning (stall_warning), logged at the end
    unigram_baseline: Optional[float] = None  # per-token cross-entropy of the training captions' unigram model


def unigram_baseline(captions: Iterable[Sequence[int]], pad_id: int = PAD_ID, start_id: int = START_ID) -> float:
    """Per-token cross-entropy (nats) of a unigram model of ``captions`` (encoded, ``<start> .. <end>``)
    on themselves: the entropy of their token distribution, ``<end>`` counted, ``<start>`` and
    ``<pad>`` not (the tokens the validation loss scores). A model that ignores the image and the
    words before does this well; nan without tokens."""
    counts = Counter(int(t) for caption in captions for t in caption if int(t) not in (pad_id, start_id))
    total = sum(counts.values())
    if not total:
        return math.nan
    return -sum(n / total * math.log(n / total) for n in counts.values())


def stall_warning(history: Sequence[dict[str, Any]], baseline: Optional[float],
                  stall_epochs: Optional[int] = STALL_EPOCHS) -> Optional[str]:
    """One line when the run stalled: its validation loss has not improved for ``stall_epochs`` epochs
    (None: that rule is off), or its final validation loss is no better than ``baseline`` (the
    unigram model's); else None."""
    losses = [h["val_loss"] for h in history]
    if not losses:
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    stale, final = len(losses) - 1 - best, losses[-1]
    reasons = []
    if stall_epochs is not None and stale >= stall_epochs:
        reasons.append(f"validation loss has not improved for {stale} epochs (best {losses[best]:.4f} at epoch "
                       f"{history[best]['epoch']})")
    if baseline is not None and math.isfinite(baseline) and not final < baseline:
        reasons.append(f"final validation loss {final:.4f} is no better than a unigram model of the training "
                       f"captions ({baseline:.4f}, which ignores the image)")
    if not reasons:
        return None
    return ("training stalled: " + "; ".join(reasons) + ". Try more epochs, a lower learning rate "
            "(--lr), another --seed, or check the data (captions matching their images).")


def train(config: Optional[TrainConfig] = None, model_config: Optional[CaptionModelConfig] = None,
          resume: Optional[str | os.PathLike] = None, status: Status = log_to_stderr,
          overrides: Optional[Sequence[str]] = None, on_epoch: Optional[EpochHook] = None) -> TrainResult:
    """Trains (or resumes, from ``resume``'s ``last.pt``) and returns where the run was written
    (``model_config`` None: the preset's). ``status`` gets the run's status lines. ``on_epoch(run,
    entry)`` is called on rank 0 after each epoch's history entry is made, before the checkpoint is
    saved (a benchmark's probe; it may add keys to ``entry``).

    Resuming keeps the run's saved configuration, but for the fields named in ``overrides`` (taken
    from ``config``; each must be one of RESUME_OVERRIDES). None: all of RESUME_OVERRIDES, as a
    library caller's ``config`` gives them; the CLI passes only the options the user typed."""
    run = TrainingRun(config or TrainConfig(), model_config, Path(resume) if resume is not None else None, status,
                      overrides)
    try:
        if run.dist.master:
            start_run_folder(run.run_dir, {"train": asdict(run.config), "model": run.model_config.to_dict(),
                                           "preprocess": run.spec.to_dict(), "data_source": run.source})
            run.status(_started_line(run, resumed=resume is not None))
        try:
            stopped = _run_epochs(run, on_epoch)
        except KeyboardInterrupt:
            run.save(LAST)
            stopped = "interrupted"
            run.status(f"interrupted: saved {run.run_dir / LAST}; continue with `capkit train --resume {run.run_dir}`")
        return _finish(run, stopped)
    finally:
        run.dist.teardown()


def _started_line(run: TrainingRun, resumed: bool) -> str:
    """The run's first status line: where it writes, the model, the data and the device."""
    n_params = sum(p.numel() for p in run.model.parameters())
    return (f"run {run.run_dir}: {run.model_config.encoder} + {run.model_config.layers}-layer "
            f"{run.model_config.decoder}, {n_params / 1e6:.1f}M parameters, vocabulary {len(run.vocab)}, "
            f"{len(run.splits['train'])} train / {len(run.splits['val'])} val images, device {run.device}"
            + (f", distilled from {run.teacher.path} (T {run.config.distill_temperature:g}, weight "
               f"{run.config.distill_weight:g})" if run.teacher is not None else "")
            + (f", resuming after epoch {run.epoch}" if resumed else "")
            + (f" ({', '.join(f'{k} {v}' for k, v in run.overridden.items())} as given)" if run.overridden else ""))


def _run_epochs(run: TrainingRun, on_epoch: Optional[EpochHook]) -> str:
    """Epoch after epoch until the configured number, max_steps or early stopping; how it stopped."""
    stale = 0
    while run.epoch < run.config.epochs:
        improved, reached = _one_epoch(run, on_epoch)
        stale = 0 if improved else stale + 1
        if reached:
            return "max-steps"
        if run.config.patience is not None and stale >= run.config.patience:
            run.status(f"early stopping: no better validation loss for {stale} epochs")
            return "early-stopping"
    return "completed"


def _one_epoch(run: TrainingRun, on_epoch: Optional[EpochHook]) -> tuple[bool, bool]:
    """Trains and validates one epoch, adds its history entry, saves the checkpoints, rewrites the
    history and its plot, and says so in one line: (whether validation improved, whether max_steps
    was reached)."""
    started = time.time()
    train_loss, reached = run.train_epoch()
    val_loss = run.validate()
    run.epoch += 1
    entry = {"epoch": run.epoch, "step": run.step, "train_loss": train_loss, "val_loss": val_loss,
             "val_perplexity": math.exp(min(val_loss, 50.0)), "seconds": round(time.time() - started, 2)}
    if run.dist.master and run.config.bleu_images:
        entry["val_bleu4"], facts = run.greedy_scores()  # greedy, on a fixed validation subset
        if facts is not None:  # synthetic data: the share of those captions stating their scene exactly right
            entry["val_facts"] = facts
        entry["val_bleu_images"] = min(run.config.bleu_images, len(run.splits["val"]))
    if run.dist.master and on_epoch is not None:
        on_epoch(run, entry)
    run.history.append(entry)
    improved = val_loss < run.best_val_loss
    if improved:
        run.best_val_loss = val_loss
    run.save(*((LAST, BEST) if improved else (LAST,)))
    if run.dist.master:
        write_history(run.run_dir, run.history, run.name)
    run.status(f"epoch {run.epoch}/{run.config.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
               f"val perplexity {entry['val_perplexity']:.2f}"
               + (f", val BLEU-4 {entry['val_bleu4']:.3f}" if entry.get("val_bleu4") is not None else "")
               + (f", facts right {entry['val_facts']:.0%}" if entry.get("val_facts") is not None else "")
               + f" ({entry['seconds']:.0f}s)" + (" *best" if improved else ""))
    return improved, reached


def _finish(run: TrainingRun, stopped: str) -> TrainResult:
    """The result, after the last status lines: images skipped, and the stall warning if the run stalled."""
    if run.skipped:
        run.status(f"skipped {len(run.skipped)} unreadable image(s); first: {next(iter(run.skipped.values()))}")
    baseline = unigram_baseline(encode_caption(run.vocab, c, run.config.max_length)
                                for r in run.splits["train"] for c in r.captions)
    # an early stop already says the loss stopped improving: only the baseline rule is news then
    stalled = stall_warning(run.history, baseline, None if stopped == "early-stopping" else STALL_EPOCHS)
    if stalled:
        run.status(stalled)
    return TrainResult(run.run_dir, run.epoch, run.best_val_loss, run.history, len(run.skipped), stopped,
                       run.overridden, [stalled] if stalled else [], baseline)


__all__ = ["RESUME_OVERRIDES", "STALL_EPOCHS", "TrainConfig", "TrainResult", "TrainingError", "learning_rate",
           "plot_history", "stall_warning", "train", "unigram_baseline"]
