"""What the throughput run (reports/cuda_throughput.py) measures: the model sizes, the random-weight and
"ragged" checkpoints, their bundles, and the targets built over them (an Inference each)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

PARITY_IMAGES = 32  # the images the ragged model is tuned on, and the parity check's
RAGGED_END_SHARES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # shares of <end>-winning steps tried for the ragged model

@dataclass(frozen=True)
class Size:
    model: dict[str, Any]  # CaptionModelConfig fields
    vocab: int
    resize: int
    crop: int
    max_length: int


SIZES = {
    "seed": Size({"encoder": "resnet50", "embed_dim": 300, "hidden_dim": 512, "decoder": "lstm"}, 10_000, 256, 224, 20),
    "small": Size({"encoder": "resnet18", "embed_dim": 32, "hidden_dim": 64, "decoder": "lstm"}, 500, 72, 64, 12),
}


@dataclass
class Target:
    name: str
    make: Callable[[], Any]  # -> an Inference
    bundle: Optional[Path] = None  # ONNX targets: for the parity check
    inference: Any = None
    rows: dict[int, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))


def _greedy_lengths(model: Any, state: Any, start_id: int, end_id: int, steps: int) -> list[int]:
    """Each row's greedy caption length from an encoded ``state`` (``steps`` where it never ends)."""
    import torch

    tokens = torch.full((len(state[0][0]),), start_id, dtype=torch.long)  # (B,)
    lengths = [steps] * len(tokens)
    for t in range(steps):
        logits, state = model.step(tokens, state)  # (B, V)
        tokens = logits.argmax(-1)  # (B,)
        for row in torch.nonzero(tokens == end_id).flatten().tolist():
            lengths[row] = min(lengths[row], t)
    return lengths


def ragged_checkpoint(source: Path, out: Path, pixels: np.ndarray) -> Path:
    """``source`` with its ``<end>`` bias raised so that greedy captions end at different steps: of the biases
    that let a given share of the first pass's steps end (RAGGED_END_SHARES), the one that gives the most
    distinct caption lengths on ``pixels``."""
    import torch

    from capkit.training.checkpoint import checkpoint_payload, load_model, save_checkpoint

    model, vocab, spec, payload = load_model(source)
    steps, end = int(payload["max_length"]), vocab.end_id
    margins = []
    with torch.inference_mode():
        # A random backbone maps every image to nearly the same features, so every row would end at the same
        # step: the projection is made to see the features standardised over these images, as a trained one would.
        features = model.encoder.features(torch.from_numpy(pixels))  # (B, F)
        linear = model.encoder.project[0]  # the Linear (a BatchNorm1d may follow it)
        linear.weight.div_(features.std())
        linear.bias.sub_(linear.weight @ features.mean(0))
        encoded = model.image_step(torch.from_numpy(pixels))  # each (L, B, H)
        state, tokens = encoded, torch.full((len(pixels),), vocab.start_id, dtype=torch.long)
        for _ in range(steps):
            logits, state = model.step(tokens, state)  # (B, V)
            others = logits.clone()
            others[:, end] = -torch.inf
            margins.append(others.max(-1).values - logits[:, end])  # (B,)
            tokens = others.argmax(-1)
        base = float(model.head.bias[end])
        spread = {}
        for share in RAGGED_END_SHARES:
            model.head.bias[end] = base + float(torch.quantile(torch.cat(margins), share))
            lengths = _greedy_lengths(model, encoded, vocab.start_id, end, steps)
            spread[share] = (len(set(lengths)), float(model.head.bias[end]))
        model.head.bias[end] = max(spread.values())[1]
    save_checkpoint(checkpoint_payload(model, vocab, spec, steps, run_name="ragged", epoch=0, step=0), out)
    return out


def build(work: Path, size: Size, say: Callable[[str], None]) -> dict[str, Path]:
    """Checkpoints and bundles under ``work``: {"checkpoint", "ragged-checkpoint", "fp32", "fp32-matmul",
    "fp16", "fp16-matmul", "ragged", "ragged-matmul"}."""
    from capkit.export.checks import sample_images
    from capkit.export.onnx_export import export_checkpoint
    from capkit.export.quantize import convert_fp16
    from capkit.reports.common import random_checkpoint
    from capkit.runtime import load_bundle
    from capkit.runtime.preprocess import PreprocessSpec

    spec = PreprocessSpec(resize=size.resize, crop=size.crop)
    def fits(payload: dict[str, Any]) -> bool:
        config = payload.get("model_config", {})
        return all(config.get(k) == v for k, v in size.model.items()) and config.get("vocab_size") == size.vocab \
            and payload.get("preprocess", {}).get("crop") == size.crop

    paths = {"checkpoint": random_checkpoint(work / "random" / "best.pt", size.model, spec, vocab_size=size.vocab,
                                             max_length=size.max_length, run_name="throughput-random", fits=fits,
                                             what="the model")}
    paths["ragged-checkpoint"] = ragged_checkpoint(paths["checkpoint"], work / "ragged-run" / "best.pt",
                                                   sample_images(spec)[:PARITY_IMAGES])
    for source, name in (("checkpoint", "fp32"), ("ragged-checkpoint", "ragged")):
        for cell, suffix in (("operator", ""), ("matmul", "-matmul")):
            say(f"exporting {name}{suffix}")
            export_checkpoint(paths[source], work / f"{name}{suffix}", check=False, cell=cell)
            paths[f"{name}{suffix}"] = work / f"{name}{suffix}"
    for suffix in ("", "-matmul"):
        convert_fp16(load_bundle(paths[f"fp32{suffix}"]), work / f"fp16{suffix}")
        paths[f"fp16{suffix}"] = work / f"fp16{suffix}"
    return paths


def onnx_target(name: str, bundle: Path, device: str, **options: Any) -> Target:
    from capkit.runtime.onnx_inference import OnnxInference

    return Target(name, lambda: OnnxInference(bundle, device=device, **options), bundle)


def torch_target(name: str, checkpoint: Path, device: str) -> Target:
    def make() -> Any:
        from capkit.training.checkpoint import load_model
        from capkit.training.torch_inference import TorchInference

        return TorchInference(load_model(checkpoint, device=device)[0], device)

    return Target(name, make)


def targets(paths: dict[str, Path], device: str) -> list[Target]:
    masked = {"mask_finished_rows": True}
    found = [onnx_target("onnx fp32 (today)", paths["fp32"], device),
             onnx_target("onnx fp32, masked rows", paths["fp32"], device, **masked),
             onnx_target("onnx fp32, matmul cell", paths["fp32-matmul"], device),
             onnx_target("onnx fp32, matmul cell, masked rows", paths["fp32-matmul"], device, **masked),
             onnx_target("onnx fp16 (today)", paths["fp16"], device),
             onnx_target("onnx fp16, matmul cell, masked rows", paths["fp16-matmul"], device, **masked),
             torch_target("pytorch eager", paths["checkpoint"], device),
             onnx_target("ragged: onnx fp32 (today)", paths["ragged"], device),
             onnx_target("ragged: onnx fp32, masked rows", paths["ragged"], device, **masked),
             onnx_target("ragged: onnx fp32, matmul cell, masked rows", paths["ragged-matmul"], device, **masked),
             torch_target("ragged: pytorch eager", paths["ragged-checkpoint"], device)]
    for target in found:
        target.inference = target.make()
    return found


__all__ = ["PARITY_IMAGES", "SIZES", "Size", "Target", "build", "ragged_checkpoint", "targets"]
