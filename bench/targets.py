"""The targets of ``capkit bench``: an ONNX bundle (:func:`bench_bundle`, ONNX Runtime, never torch)
and the PyTorch eager model of a checkpoint (:func:`bench_checkpoint`, torch imported inside it).
Both put their Inference behind the runtime's Captioner and hand it to the same
:func:`~capkit.bench.timing.bench_captioner`, so the ratios compare like with like."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from capkit.bench.cold_start import caption_command, cold_start
from capkit.bench.report import TargetReport
from capkit.bench.timing import bench_captioner
from capkit.runtime.image_files import ImageSource


class _RuntimeDefault:
    def __repr__(self) -> str:
        return "RUNTIME_DEFAULT"


RUNTIME_DEFAULT: Any = _RuntimeDefault()  # an option left to OnnxInference's own default


def bench_bundle(bundle: Union[str, os.PathLike, None], images: Sequence[ImageSource], *, device: str = "cpu",
                 threads: Optional[int] = None, step_threads: Optional[int] = None,
                 spin_us: Union[int, None, _RuntimeDefault] = RUNTIME_DEFAULT,
                 name: Optional[str] = None, cold_runs: int = 0, cold_image: Optional[str] = None,
                 **options: Any) -> TargetReport:
    """:func:`~capkit.bench.timing.bench_captioner` for an ONNX bundle (None: the default bundle),
    plus ``cold_runs`` fresh ``capkit caption IMAGE --model BUNDLE --device DEVICE [--threads N]``
    processes (IMAGE: ``cold_image``, else the first image). ``threads``, ``step_threads``,
    ``spin_us``: as :class:`~capkit.runtime.onnx_inference.OnnxInference`'s (``spin_us`` None: ONNX
    Runtime's own; left out: the runtime's default). ``options``: bench_captioner's."""
    from capkit.runtime.bundle import load_bundle
    from capkit.runtime.captioner import Captioner
    from capkit.runtime.onnx_inference import OnnxInference

    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    spin = {} if spin_us is RUNTIME_DEFAULT else {"spin_us": spin_us}
    inference = OnnxInference(loaded, device=device, threads=threads, step_threads=step_threads, **spin)
    captioner = Captioner.from_inference(inference, manifest.vocab, manifest.preprocess, manifest.max_length, loaded)
    report = bench_captioner(captioner, images, name=name or f"onnx {manifest.precision}", runtime="onnxruntime",
                             precision=manifest.precision, device=inference.device, source=str(loaded.folder),
                             threads={**inference.threads, "spin_us": inference.spin_us},
                             size_bytes=loaded.size_bytes(), **options)
    if manifest.decoder.greedy_outputs is None:
        report.notes.append("the step graph has no next_token output (an older bundle): greedy steps copy the logits")
    if cold_runs:
        args = ["--model", str(loaded.folder), "--device", device]
        if threads is not None:
            args += ["--threads", str(threads)]
        report.cold_start = cold_start(caption_command(cold_image or str(images[0]), args), cold_runs)
    return report


def bench_checkpoint(checkpoint: Union[str, os.PathLike, None], images: Sequence[ImageSource], *,
                     device: str = "cpu", threads: Optional[int] = None, cold_runs: int = 0,
                     cold_image: Optional[str] = None, name: str = "pytorch eager", **options: Any) -> TargetReport:
    """:func:`~capkit.bench.timing.bench_captioner` for PyTorch eager on a checkpoint's weights (a .pt
    file or a run folder; None: runs/latest), plus ``cold_runs`` fresh ``capkit caption IMAGE
    --checkpoint CKPT --device DEVICE [--threads N]`` processes. ``threads``: torch's intra-op
    threads while measuring (None: torch's, left as they are); restored afterwards. Imports torch
    (ImportError without it)."""
    import torch

    from capkit.training.checkpoint import resolve_checkpoint
    from capkit.training.torch_inference import checkpoint_captioner, resolve_torch_device

    path = resolve_checkpoint(checkpoint)
    torch_device = str(resolve_torch_device(device))
    previous = torch.get_num_threads()
    try:
        captioner = checkpoint_captioner(path, torch_device, threads)
        report = bench_captioner(captioner, images, name=name, runtime="pytorch", precision="fp32",
                                 device=torch_device, source=str(path), threads={"torch": torch.get_num_threads()},
                                 **options)
    finally:
        torch.set_num_threads(previous)
    if cold_runs:
        args = ["--checkpoint", str(path), "--device", torch_device]
        if threads is not None:
            args += ["--threads", str(threads)]
        report.cold_start = cold_start(caption_command(cold_image or str(images[0]), args), cold_runs)
    return report


__all__ = ["RUNTIME_DEFAULT", "bench_bundle", "bench_checkpoint"]
