"""The PyTorch reference: a thin :class:`capkit.runtime.decoding.Inference` over a CaptionModel.

It runs the same ``decode`` loop as the ONNX runtime, so greedy and seeded sampling give the
same captions when the logits agree. :func:`checkpoint_captioner` puts a checkpoint's model behind
the runtime's :class:`~capkit.runtime.captioner.Captioner` (``capkit caption --checkpoint``, the
bench's PyTorch side); :func:`resolve_torch_device` is the one reading of ``--device`` for torch.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from capkit.models import CaptionModel, RecurrentState, greedy_choice
from capkit.runtime.captioner import Captioner
from capkit.runtime.decoding import DecodingOptions, DecodingResult, decode
from capkit.runtime.errors import CapkitError, check_int
from capkit.runtime.image_files import ImageSource
from capkit.runtime.limits import DEFAULT_LIMITS, Limits
from capkit.runtime.preprocess import PreprocessSpec, preprocess_batch
from capkit.runtime.vocab import Vocabulary

TORCH_DEVICES = ("auto", "cpu", "cuda")


def resolve_torch_device(name: str | torch.device) -> torch.device:
    """``auto``: CUDA when PyTorch sees a device, else the CPU; ``cuda`` without one is an error."""
    if isinstance(name, torch.device):
        return name
    if name not in TORCH_DEVICES:
        raise CapkitError(f"unknown device {name!r}; one of {', '.join(TORCH_DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CapkitError("device cuda: PyTorch sees no CUDA device; use --device cpu")
    return torch.device(name)


class TorchInference:
    """``data_source``: the dataset the model was trained on, as its checkpoint records it (what
    ``capkit eval`` scores when no ``--data`` is given)."""

    def __init__(self, model: CaptionModel, device: str | torch.device = "cpu", data_source: Optional[str] = None):
        self.model = model.eval()
        self.device = torch.device(device)
        self.data_source = data_source

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> RecurrentState:
        return self.model.image_step(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))  # each (L, B, H)

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, RecurrentState]:
        logits, state = self.model.step(torch.from_numpy(tokens).to(self.device), state)  # (B, V)
        return logits.float().cpu().numpy(), state

    @torch.inference_mode()
    def greedy_step(self, tokens: np.ndarray, state: RecurrentState) -> tuple[np.ndarray, np.ndarray, RecurrentState]:
        """The greedy choice in PyTorch, as the exported step graph makes it (``greedy_choice``)."""
        logits, state = self.model.step(torch.from_numpy(tokens).to(self.device), state)  # (B, V)
        chosen, logprobs = greedy_choice(logits.float())  # (B,), (B,)
        return chosen.cpu().numpy(), logprobs.cpu().numpy(), state

    def select(self, state: RecurrentState, rows: np.ndarray) -> RecurrentState:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.device)  # (B',)
        return tuple(s.index_select(1, index) for s in state)  # each (L, B', H)


def caption_images(model: CaptionModel, vocab: Vocabulary, spec: PreprocessSpec, images: Sequence[ImageSource],
                   options: DecodingOptions, device: str | torch.device = "cpu") -> list[DecodingResult]:
    """The PyTorch path end to end: preprocess with the runtime's functions, decode with the shared loop."""
    pixels = preprocess_batch(images, spec)  # (B, 3, H, W)
    return decode(TorchInference(model, device), pixels, options, vocab)


def checkpoint_captioner(checkpoint: Optional[str | os.PathLike] = None, device: str | torch.device = "auto",
                         threads: Optional[int] = None, *, limits: Limits = DEFAULT_LIMITS) -> Captioner:
    """The PyTorch model of a checkpoint (a .pt file, a run folder, None: runs/latest) behind a
    Captioner: the same preprocessing and decoding loop as a bundle; only the Inference differs.
    ``threads``: torch's intra-op threads (None: left as they are)."""
    from capkit.training.checkpoint import load_model

    torch_device = resolve_torch_device(device)
    if threads is not None:
        threads = check_int(threads, "threads")
        limits.check("max_threads", threads, "threads")
        torch.set_num_threads(threads)
    model, vocab, spec, payload = load_model(checkpoint, device=torch_device)
    inference = TorchInference(model, torch_device, payload.get("data_source"))
    return Captioner.from_inference(inference, vocab, spec, int(payload["max_length"]), limits=limits)
