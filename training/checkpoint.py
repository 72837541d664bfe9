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

import dataclasses
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from capkit.runtime.bundle import LATEST_RUN
from capkit.runtime.errors import CapkitError, first_line
from capkit.runtime.limits import DEFAULT_LIMITS
from capkit.runtime.preprocess import PreprocessSpec
from capkit.runtime.vocab import Vocabulary

CHECKPOINT_FORMAT = 1
BEST, LAST = "best.pt", "last.pt"
ERROR_DETAIL = 300  # characters of a foreign error's first line that a CheckpointError quotes


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


def _load_reason(error: BaseException) -> str:
    """torch.load's complaint in one line, without its advice to load with ``weights_only=False``
    (arbitrary code execution: wrong advice for a file from a stranger)."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+was not an allowed global.*)?$", text, re.MULTILINE)
        detail = f" ({found.group(1).strip()[:200]})" if found else ""
        return ("capkit loads checkpoints with weights_only=True, so that no code in them runs, and this file holds "
                f"something else: Python objects, not only tensors and plain values{detail}")
    return f"{type(error).__name__}: {first_line(error, ERROR_DETAIL)}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, read with ``weights_only=True``; a file that is not one is a one-line
    CheckpointError (never torch's advice to disable ``weights_only``)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch warns about a pickle protocol it did not write before it refuses (or reads) the file; the
            # one-line error below says what matters, and nothing in the file runs either way
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # a truncated, foreign or corrupt file, or a pickle of Python objects
        raise CheckpointError(f"{path}: not a readable capkit checkpoint ({_load_reason(e)})") from None
    version = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or type(version) is not int or version != CHECKPOINT_FORMAT:
        what = f"format {version!r}" if isinstance(payload, dict) else f"a {type(payload).__name__}, not a dict"
        raise CheckpointError(f"{path}: not a capkit checkpoint ({what}; this capkit reads format {CHECKPOINT_FORMAT})")
    return payload


MODEL_KEYS = {"model_config": dict, "model": dict, "vocab": (list, tuple), "preprocess": dict, "max_length": int}


def _short(value: Any) -> str:
    from reprlib import repr as short  # bounded: a hostile value may be huge

    return short(value)


def check_payload(payload: dict[str, Any], path: str | os.PathLike):
    """(model configuration, vocabulary, preprocess spec) of a checkpoint's payload, every key that
    :func:`load_model` needs checked first: present, of the right type, in range, and consistent
    (the configuration's vocab_size is the vocabulary's length; its encoder a torchvision model).
    Builds nothing; raises a one-line CheckpointError naming the file and the key."""
    from capkit.models.config import CaptionModelConfig

    for key, kind in MODEL_KEYS.items():
        if key not in payload:
            raise CheckpointError(f"{path}: the checkpoint has no {key!r}")
        value = payload[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise CheckpointError(f"{path}: {key} must be a {names}, got {type(value).__name__}")
    max_length = payload["max_length"]
    if not 1 <= max_length <= DEFAULT_LIMITS.max_length:
        raise CheckpointError(f"{path}: max_length must be from 1 to {DEFAULT_LIMITS.max_length}, got {max_length}")
    words = payload["vocab"]
    if not 0 < len(words) <= DEFAULT_LIMITS.max_vocab_size or not all(isinstance(w, str) for w in words):
        raise CheckpointError(f"{path}: vocab must be a list of 1 to {DEFAULT_LIMITS.max_vocab_size} words (strings)")
    try:
        vocab = Vocabulary(tuple(words))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: vocab: {first_line(e, ERROR_DETAIL)}") from None
    try:
        spec = PreprocessSpec.from_dict(payload["preprocess"])
    except (ValueError, TypeError, KeyError) as e:
        detail = f"no {e}" if isinstance(e, KeyError) else first_line(e, ERROR_DETAIL)
        raise CheckpointError(f"{path}: preprocess: {detail}") from None
    try:
        config = CaptionModelConfig.from_dict(payload["model_config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: model_config: {first_line(e, ERROR_DETAIL)}") from None
    if config.vocab_size != len(vocab):
        raise CheckpointError(f"{path}: model_config.vocab_size is {config.vocab_size} but the vocabulary has "
                              f"{len(vocab)} words")
    from capkit.models.captioning import known_encoders

    if config.encoder not in known_encoders():
        raise CheckpointError(f"{path}: model_config: unknown encoder {_short(config.encoder)}; a torchvision "
                              "classification model such as resnet50, resnet18 or mobilenet_v3_small")
    return config, vocab, spec


def load_model(run_or_checkpoint: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu"):
    """(model in eval mode, vocabulary, preprocess spec, checkpoint payload) from a checkpoint or run.

    Everything is checked before the model is built (:func:`check_payload`), then the weights'
    names and shapes against the model's, built first on PyTorch's ``meta`` device (no memory):
    a checkpoint that claims hidden_dim 65536 but holds small tensors fails in milliseconds. Every
    problem is a one-line CheckpointError, ``<path>: weights do not fit the model: <problem>``
    for the weights."""
    path = resolve_checkpoint(run_or_checkpoint)
    payload = load_checkpoint(path)
    model, vocab, spec = model_from_payload(payload, path)
    model.to(device).eval()
    payload["path"] = str(path)
    return model, vocab, spec, payload


def model_from_payload(payload: dict[str, Any], path: str | os.PathLike):
    """(model with the checkpoint's weights, vocabulary, preprocess spec), everything checked first (see
    :func:`load_model`); for ``load_model`` and for resuming a training run."""
    from capkit.models import CaptionModel
    from capkit.models.captioning import state_dict_problem

    config, vocab, spec = check_payload(payload, path)
    build = dataclasses.replace(config, pretrained=False)  # the checkpoint has the weights: no download
    try:
        with torch.device("meta"):
            expected = CaptionModel(build).state_dict()
    except CapkitError as e:
        raise CheckpointError(f"{path}: model_config: {first_line(e, ERROR_DETAIL)}") from None
    problem = state_dict_problem(expected, payload["model"])
    if problem is not None:
        raise CheckpointError(f"{path}: weights do not fit the model: {problem}")
    model = CaptionModel(build)
    model.config = config
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, ValueError) as e:  # e.g. a tensor of a dtype that does not convert
        raise CheckpointError(f"{path}: weights do not fit the model: {first_line(e, ERROR_DETAIL)}") from None
    return model, vocab, spec
