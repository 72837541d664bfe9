"""PyTorch captioning models (needs the ``train`` extra)."""

from capkit.models.captioning import (
    DECODERS,
    CaptionModel,
    CaptionModelConfig,
    ImageEncoder,
    State,
    build_backbone,
    build_model,
    greedy_choice,
)

__all__ = ["DECODERS", "CaptionModel", "CaptionModelConfig", "ImageEncoder", "State", "build_backbone", "build_model",
           "greedy_choice"]
