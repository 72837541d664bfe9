"""The model's configuration: a plain dataclass, importable without torch (the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from capkit.runtime.vocab import MIN_VOCAB_SIZE

STATE_NAMES = {"lstm": ("h", "c"), "rnn": ("h",), "gru": ("h",)}  # the recurrent state tensors of each decoder kind
DECODER_KINDS = tuple(STATE_NAMES)


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
    forget_bias: float = 1.0  # LSTM forget-gate bias at init (Jozefowicz et al. 2015): the image, seen only at
    # step 0, must survive to the words that describe it; PyTorch's ~0 halves the memory at every step

    def __post_init__(self) -> None:
        if self.decoder not in DECODER_KINDS:
            raise ValueError(f"unknown decoder {self.decoder!r}; one of {', '.join(DECODER_KINDS)}")
        if self.layers < 1 or self.embed_dim < 1 or self.hidden_dim < 1 or self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"layers, embed_dim, hidden_dim must be >= 1 and vocab_size >= {MIN_VOCAB_SIZE}")

    @property
    def state_names(self) -> tuple[str, ...]:
        return STATE_NAMES[self.decoder]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CaptionModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


__all__ = ["CaptionModelConfig", "DECODER_KINDS", "STATE_NAMES"]
