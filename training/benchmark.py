"""The PyTorch side of `capkit bench`: a checkpoint's eager model through the same Captioner, decode
loop and timing as the ONNX bundles (:mod:`capkit.runtime.benchmark`), so the ratios compare like with like."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch

from capkit.runtime.benchmark import TargetReport, bench_captioner, caption_command, cold_start
from capkit.runtime.captioner import Captioner
from capkit.runtime.errors import CapkitError
from capkit.runtime.preprocess import ImageSource
from capkit.training.checkpoint import load_model, resolve_checkpoint
from capkit.training.torch_inference import TorchInference


def torch_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CapkitError("--device cuda: PyTorch sees no CUDA device")
    return device


def checkpoint_captioner(checkpoint: str | os.PathLike, device: str = "cpu") -> Captioner:
    """The eager model of a checkpoint (a .pt file or a run folder) behind a Captioner."""
    model, vocab, spec, payload = load_model(checkpoint, device=device)
    return Captioner.from_inference(TorchInference(model, device), vocab, spec, int(payload["max_length"]))


def bench_checkpoint(checkpoint: Optional[str | os.PathLike], images: Sequence[ImageSource], *, device: str = "cpu",
                     threads: Optional[int] = None, cold_runs: int = 0, cold_image: Optional[str] = None,
                     name: str = "pytorch eager", **options: Any) -> TargetReport:
    """:func:`~capkit.runtime.benchmark.bench_captioner` for PyTorch eager on a checkpoint's weights, plus
    ``cold_runs`` fresh ``capkit caption --checkpoint`` processes. ``threads``: torch's intra-op
    threads (None: torch's default, left as it is)."""
    path = resolve_checkpoint(checkpoint)
    device = torch_device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        captioner = checkpoint_captioner(path, device)
        report = bench_captioner(captioner, images, name=name, runtime="pytorch", precision="fp32", device=device,
                                 source=str(path), threads={"torch": torch.get_num_threads()}, **options)
    finally:
        torch.set_num_threads(previous)
    if cold_runs:
        args = ["--checkpoint", str(path), "--device", device]
        if threads is not None:
            args += ["--threads", str(threads)]
        report.cold_start = cold_start(caption_command(cold_image or str(images[0]), args), cold_runs)
    return report


__all__ = ["bench_checkpoint", "checkpoint_captioner", "torch_device"]
