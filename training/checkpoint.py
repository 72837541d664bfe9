"""Checkpoints: one self-contained file per save, written atomically, loadable with ``weights_only=True``.

A checkpoint is a dict of plain values and tensors; nothing pickled but tensors:
- ``format``: CHECKPOINT_FORMAT
- ``model_config``: CaptionModelConfig as a dict; ``model``: the state dict
- ``vocab``: the word list (index = token id); ``preprocess``: PreprocessSpec as a dict; ``max_length``
- ``train_config``: the resolved TrainConfig as a dict; ``run_name``
- ``epoch`` (epochs completed), ``step``, ``best_val_loss``, ``history`` (one dict per epoch)
- ``optimizer``: its state dict; ``rng``: torch and Python RNG states (for ``--resume``)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from capkit.runtime.bundle import LATEST_RUN
from capkit.runtime.errors import CapkitError
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import Vocabulary

CHECKPOINT_FORMAT = 1
BEST, LAST = "best.pt", "last.pt"


class CheckpointError(CapkitError):
    """A checkpoint or run folder that cannot be used; one line naming it."""


def checkpoint_payload(model, vocab: Vocabulary, spec: PreprocessSpec, max_length: int, **extra: Any) -> dict[str, Any]:
    """What :func:`load_model` and ``capkit export`` need from a checkpoint, as a dict for :func:`save_checkpoint`.

    ``model``: a CaptionModel; its ``config`` becomes ``model_config`` and its ``state_dict()``
    ``model``. ``vocab``, ``spec`` and ``max_length`` become ``vocab`` (the word list), ``preprocess``
    and ``max_length``. ``extra`` adds keys, or replaces these: a training run adds ``train_config``,
    ``run_name``, ``data_source``, ``epoch``, ``step``, ``best_val_loss``, ``history``, ``optimizer``
    and ``rng`` (see the module docstring); export reads the run's provenance from them when present.
    """
    return {"model_config": model.config.to_dict(), "model": model.state_dict(), "vocab": list(vocab.words),
            "preprocess": spec.to_dict(), "max_length": int(max_length), **extra}


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Writes to a temporary file in the same folder, syncs it, then renames over ``path``:
    a kill at any moment leaves either the old or the new checkpoint, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_checkpoint(run_or_checkpoint: Optional[str | os.PathLike] = None, which: str = BEST) -> Path:
    """A checkpoint file from a file, a run folder (its ``best.pt``) or nothing (``runs/latest``)."""
    path = Path(run_or_checkpoint) if run_or_checkpoint is not None else LATEST_RUN
    if path.is_dir():
        path = path / which
    if not path.is_file():
        hint = " (train one with `capkit train`)" if run_or_checkpoint is None else ""
        raise CheckpointError(f"{path}: no such checkpoint{hint}")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated, foreign or corrupt file
        raise CheckpointError(f"{path}: not a readable capkit checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a capkit checkpoint (format {payload.get('format') if isinstance(payload, dict) else None!r})")
    return payload


def load_model(run_or_checkpoint: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu"):
    """(model in eval mode, vocabulary, preprocess spec, checkpoint payload) from a checkpoint or run."""
    from capkit.models import CaptionModel, CaptionModelConfig

    path = resolve_checkpoint(run_or_checkpoint)
    payload = load_checkpoint(path)
    config = CaptionModelConfig.from_dict(payload["model_config"])
    model = CaptionModel(CaptionModelConfig.from_dict({**payload["model_config"], "pretrained": False}))
    model.config = config
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    payload["path"] = str(path)
    return model, Vocabulary(tuple(payload["vocab"])), PreprocessSpec.from_dict(payload["preprocess"]), payload
