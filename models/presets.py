"""Named model presets for ``capkit train --preset``: a few CaptionModelConfig fields (and the export
default that goes with them), importable without torch. Options typed on the command line win over
the preset's; the preset's name is saved in the run's TrainConfig, so ``capkit export`` knows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Preset:
    model: dict[str, Any] = field(default_factory=dict)  # CaptionModelConfig fields it sets
    quantize: Optional[str] = None  # what `capkit export` writes besides fp32 when not told (--quantize)
    resize: Optional[int] = None  # photos' shorter side before the centre crop (None: the backbone's own preset)
    summary: str = ""  # one line for --help
    min_epochs: Optional[int] = None  # a run's epochs when not told (--epochs), at least (None: training's MIN_EPOCHS)
    min_image_size: Optional[int] = None  # synthetic images smaller than this are upscaled to it (not a typed
    # --image-size): a backbone whose stem shrinks its input fast loses a small picture's small shapes


PRESETS: dict[str, Preset] = {
    # ResNet-18's first three stages, their last map kept as 4 x 4 cells, and an LSTM 300/512 that reads the
    # image at every step: minutes on a laptop CPU, and the facts of the demo's scenes right (docs/seed-sweep.md)
    "default": Preset({"backbone_stages": 3, "image_grid": 4},
                      summary="ResNet-18 (3 stages, 4x4 cells) + LSTM 300/512 reading the image at every step"),
    # the course report's model: ResNet-50 -> 300-d image embedding -> LSTM with hidden 512
    "seed": Preset({"encoder": "resnet50", "decoder": "lstm", "layers": 1, "embed_dim": 300, "hidden_dim": 512,
                    "image_each_step": False},
                   summary="the report's ResNet-50 + LSTM 300/512"),
    # for phones and small boards: MobileNetV3-Small (2.5M parameters with its head, 0.06 GFLOPs at
    # 224 px) and a decoder whose vocabulary-sized tables dominate the bundle: at 10,000 words, the
    # embedding (E) and the output layer (H) take 10,000 x (E + H) weights, 3.8 MB at int8 for 128 + 256
    # Like the default, its first three stages (to stride 16, 48 channels) as 4 x 4 cells, read at every step.
    "edge": Preset({"encoder": "mobilenet_v3_small", "decoder": "lstm", "layers": 1, "embed_dim": 128,
                    "hidden_dim": 256, "backbone_stages": 3, "image_grid": 4}, quantize="int8",
                   summary="MobileNetV3-Small (3 stages, 4x4 cells) + LSTM 128/256, exported int8 too",
                   # 240 rather than MobileNetV3's 256 before the same 224 crop: a 640x480 photo's shorter side is
                   # then twice it, so libjpeg decodes it at half scale and no resize follows (preprocess.FAST_DECODE)
                   resize=240,
                   # MobileNetV3's stem halves the input twice in its first two layers, at 16 channels: at the demo's
                   # 64 px, 8-pixel shapes were 2 px wide there (seed 0: shapes right in 94% of test captions after 16
                   # epochs); at 128, 99.6% after 12 (docs/distill.md)
                   min_image_size=128,
                   # the smaller model learns the demo's scenes more slowly: seed 0 at 128 px stated 94.4% of them
                   # exactly right after 8 epochs, 99.6% after 12 (docs/distill.md)
                   min_epochs=12),
}


def preset(name: Optional[str]) -> Preset:
    """The preset called ``name`` (None: "default"); an unknown name is a ValueError naming the choices."""
    if name is None:
        return PRESETS["default"]
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["PRESETS", "Preset", "preset"]
