"""PyTorch captioning models (the ``train`` extra). ``CaptionModelConfig`` (:mod:`capkit.models.config`)
imports without torch; the rest is imported on first use, so that reading a configuration (the
CLI's defaults, a manifest) never loads PyTorch."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from capkit.models.config import DECODER_KINDS, STATE_NAMES, CaptionModelConfig

_TORCH_NAMES = ("DECODERS", "CaptionModel", "ImageEncoder", "RecurrentState", "build_backbone", "build_model",
                "greedy_choice")

__all__ = ["DECODER_KINDS", "STATE_NAMES", "CaptionModelConfig", *_TORCH_NAMES]


def __getattr__(name: str) -> Any:
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module 'capkit.models' has no attribute {name!r}")
    value = getattr(import_module("capkit.models.captioning"), name)
    globals()[name] = value
    return value
