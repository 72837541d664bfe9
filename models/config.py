"""The model's configuration: a plain dataclass, importable without torch (the CLI reads its defaults)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from capkit.runtime.errors import CapkitError, check_int
from capkit.runtime.limits import DEFAULT_LIMITS
from capkit.runtime.vocab import MIN_VOCAB_SIZE

STATE_NAMES = {"lstm": ("h", "c"), "rnn": ("h",), "gru": ("h",)}  # the recurrent state tensors of each decoder kind
DECODER_KINDS = tuple(STATE_NAMES)
# Sane bounds, checked before anything is allocated: a checkpoint or option from a stranger must not
# make capkit build a model of terabytes (hidden_dim 10**9) before noticing that its weights do not fit.
MAX_WIDTH = 65536  # embed_dim and hidden_dim
MAX_LAYERS = 64  # stacked recurrent layers
MAX_VOCAB_SIZE = DEFAULT_LIMITS.max_vocab_size  # the runtime's own limit on a manifest's vocabulary
MAX_GRID = 16  # image_grid: 16 x 16 cells of the feature map
MAX_STAGES = 4  # backbone_stages: a ResNet has four residual stages
INT_BOUNDS = {"vocab_size": (MIN_VOCAB_SIZE, MAX_VOCAB_SIZE), "embed_dim": (1, MAX_WIDTH), "hidden_dim": (1, MAX_WIDTH),
              "layers": (1, MAX_LAYERS), "image_grid": (1, MAX_GRID)}
BOOL_FIELDS = ("pretrained", "freeze_encoder", "freeze_embeddings", "project_norm", "image_each_step")
IMAGE_STATE = "image_embedding"  # the state tensor that carries the image embedding to every step (image_each_step)
# A configuration saved before a field existed meant the model of its time: the value that field then had.
SAVED_BEFORE = {"image_each_step": False, "image_grid": 1, "backbone_stages": None}


class ModelConfigError(CapkitError):
    """A model configuration (or encoder weights) that capkit cannot build; one line naming the field."""


@dataclass
class CaptionModelConfig:
    vocab_size: int  # rows of the word embedding and of the logits; set from the vocabulary
    encoder: str = "resnet18"  # a torchvision classification backbone by name: resnet18 keeps the demo within
    # minutes on a laptop CPU; the seed report uses resnet50 (`capkit train --encoder resnet50`)
    pretrained: bool = False  # start from torchvision's ImageNet weights (downloads them on first use)
    freeze_encoder: bool = False  # train only the projection and decoder, as the seed does on a pretrained CNN
    embed_dim: int = 300  # word and image embedding width; 300 matches the common GloVe vectors
    hidden_dim: int = 512  # recurrent state width, the seed's 512
    decoder: str = "lstm"  # recurrent core: lstm (seed baseline), rnn (vanilla tanh, seed uses 2 layers) or gru
    layers: int = 1  # stacked recurrent layers
    dropout: float = 0.0  # between stacked recurrent layers; ignored with one layer
    freeze_embeddings: bool = False  # keep pretrained word vectors fixed
    project_norm: bool = True  # BatchNorm1d after the projection: the image step's input at the scale of word
    # embeddings; from-scratch training on the synthetic set reaches a given BLEU in about half the epochs
    image_each_step: bool = True  # the image embedding is added to the word embedding at every step, not only
    # given as step 0 (the seed's Show-and-Tell): the decoder reads the image again when it names each object;
    # on the demo data this takes greedy captions that state their scene exactly right from 54% to 97%
    # (docs/seed-sweep.md). The embedding rides in the recurrent state as one more tensor, IMAGE_STATE.
    backbone_stages: Optional[int] = None  # the backbone's stages kept, a stage ending where the output stride
    # doubles (a ResNet's layer1-4; a MobileNet's blocks up to stride 2 ** (stages + 1)); None: all four. On
    # 64-pixel images the fourth stage works on a 2 x 2 map; three stages keep a 4 x 4 one, train faster and
    # name the shapes better (docs/seed-sweep.md)
    image_grid: int = 1  # the backbone's last feature map pooled to image_grid x image_grid cells, kept apart (1:
    # global average pooling, the seed's): pooling the map to one vector mixes two objects' features, so
    # that a caption can bind a colour to the wrong shape
    forget_bias: float = 1.0  # LSTM forget-gate bias at init (Jozefowicz et al. 2015): the image, seen only at
    # step 0, must survive to the words that describe it; PyTorch's ~0 halves the memory at every step

    def __post_init__(self) -> None:
        """Types and ranges of every field (ModelConfigError, a ValueError): checked before any model is
        built, so that an absurd size fails in microseconds instead of allocating."""
        if not isinstance(self.decoder, str) or self.decoder not in DECODER_KINDS:
            raise ModelConfigError(f"unknown decoder {self.decoder!r}; one of {', '.join(DECODER_KINDS)}")
        if not isinstance(self.encoder, str) or not self.encoder or len(self.encoder) > 200:
            raise ModelConfigError(f"encoder must be the name of a torchvision model, got {self.encoder!r}")
        for name, (low, high) in INT_BOUNDS.items():
            check_int(getattr(self, name), name, low, high, error=ModelConfigError)
        check_int(self.backbone_stages, "backbone_stages", 1, MAX_STAGES, error=ModelConfigError, optional=True)
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ModelConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, low, high in (("dropout", 0.0, 1.0), ("forget_bias", -1e6, 1e6)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise ModelConfigError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")

    @property
    def state_names(self) -> tuple[str, ...]:
        """The recurrent state's tensors, in graph order: the decoder kind's, then IMAGE_STATE with image_each_step."""
        return STATE_NAMES[self.decoder] + ((IMAGE_STATE,) if self.image_each_step else ())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CaptionModelConfig":
        """Unknown keys are ignored (older/newer capkit); a missing ``vocab_size`` or a non-dict is a
        ModelConfigError."""
        if not isinstance(data, dict):
            raise ModelConfigError(f"a model configuration must be a dict, got {type(data).__name__}")
        if "vocab_size" not in data:
            raise ModelConfigError("the model configuration has no vocab_size")
        known = {f.name for f in fields(cls)}
        return cls(**{**SAVED_BEFORE, **{k: v for k, v in data.items() if k in known}})


__all__ = ["CaptionModelConfig", "DECODER_KINDS", "IMAGE_STATE", "MAX_GRID", "MAX_LAYERS", "MAX_STAGES", "MAX_WIDTH",
           "ModelConfigError", "STATE_NAMES"]
