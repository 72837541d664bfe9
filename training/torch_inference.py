"""The PyTorch reference: a thin :class:`capkit.runtime.decoding.Inference` over a CaptionModel.

It runs the same ``decode`` loop as the ONNX runtime, so greedy and seeded sampling give the
same captions when the logits agree.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from capkit.models import CaptionModel, State, greedy_choice
from capkit.runtime.decoding import DecodingOptions, DecodingResult, decode
from capkit.runtime.preprocess import ImageSource, PreprocessSpec, preprocess_batch
from capkit.runtime.vocab import Vocabulary


class TorchInference:
    def __init__(self, model: CaptionModel, device: str | torch.device = "cpu"):
        self.model = model.eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> State:
        return self.model.image_step(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))  # each (L, B, H)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, state = self.model.step(torch.from_numpy(tokens).to(self.device), state)  # (B, V)
        return logits.float().cpu().numpy(), state

    @torch.inference_mode()
    def greedy_step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray, State]:
        """The greedy choice in PyTorch, as the exported step graph makes it (``greedy_choice``)."""
        logits, state = self.model.step(torch.from_numpy(tokens).to(self.device), state)  # (B, V)
        chosen, logprobs = greedy_choice(logits.float())  # (B,), (B,)
        return chosen.cpu().numpy(), logprobs.cpu().numpy(), state

    def select(self, state: State, rows: np.ndarray) -> State:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)  # (B',)
        return tuple(s.index_select(1, index) for s in state)  # each (L, B', H)


def caption_images(model: CaptionModel, vocab: Vocabulary, spec: PreprocessSpec, images: Sequence[ImageSource],
                   options: DecodingOptions, device: str | torch.device = "cpu") -> list[DecodingResult]:
    """The PyTorch path end to end: preprocess with the runtime's functions, decode with the shared loop."""
    pixels = preprocess_batch(images, spec)  # (B, 3, H, W)
    return decode(TorchInference(model, device), pixels, options, start_id=vocab.start_id, end_id=vocab.end_id)
