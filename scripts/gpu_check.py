#!/usr/bin/env python
"""The CUDA paths, checked end to end in one short run: training steps, export, CUDA against CPU
parity of both graphs and of greedy captions, fp16, shared use from 8 threads, `capkit caption
--device cuda`, and `capkit bench` against PyTorch eager; one table at the end.

    scripts/gpu_check.sh            # on a machine with a GPU (ONNX Runtime's CUDA provider and torch.cuda)
    scripts/gpu_check.sh --cpu      # the same steps on the CPU: how CI keeps this script working
    scripts/gpu_check.sh --throughput ...   # where a batched caption's time goes: reports/cuda_throughput.py

Every comparison is "device against the CPU" (in --cpu mode the CPU against itself, which tests
the script, not the hardware). Tolerances: the graphs' outputs within 1e-2 of the CPU's (on Ampere
and later GPUs, cuDNN and ONNX Runtime's CUDA provider run float32 convolutions in TF32, whose
10-bit mantissa puts errors near 1e-3 on a ResNet's state), greedy captions equal on at least 31 of
32 images (a near tie may flip an argmax), fp16 captions reported, not held to equality. Exit
status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from capkit.runtime.errors import first_line

GRAPH_TOLERANCE = 1e-2  # TF32 convolutions on the GPU (see the module docstring)
MIN_GREEDY_EQUAL = 31  # of 32 images
IMAGES = 32


class Checks:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []  # (check, measured, verdict)

    def record(self, name: str, measured: str, ok: bool | None) -> None:
        verdict = "info" if ok is None else "ok" if ok else "FAILED"
        self.rows.append((name, measured, verdict))
        print(f"[{verdict:>6}] {name}: {measured}", file=sys.stderr, flush=True)

    def run(self, name: str, fn: Callable[[], tuple[str, bool | None]]) -> None:
        try:
            measured, ok = fn()
        except Exception as e:  # a step that breaks is a failed check, and the others still run
            measured, ok = f"{type(e).__name__}: {first_line(e, 160)}", False
        self.record(name, measured, ok)

    @property
    def failed(self) -> bool:
        return any(verdict == "FAILED" for _, _, verdict in self.rows)

    def table(self) -> str:
        lines = ["| check | measured | verdict |", "|---|---|---|"]
        lines += [f"| {name} | {measured} | {verdict} |" for name, measured, verdict in self.rows]
        return "\n".join(lines)


def capkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "capkit", *args]


def max_abs(a: Any, b: Any) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(a, b))


def host(state: Any) -> list[np.ndarray]:
    return [s.numpy() if hasattr(s, "numpy") else np.asarray(s) for s in state]


@dataclass
class Context:
    """What every step shares: the device under test and the fresh folder the steps write in."""

    device: str  # "cuda", or "cpu" in --cpu mode
    steps: int  # training steps
    work: Path  # data/, runs/check/, bundle/ and bundle-fp16/ go here

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def run_dir(self) -> Path:
        return self.work / "runs" / "check"

    @property
    def bundle(self) -> Path:
        return self.work / "bundle"

    @property
    def fp16_bundle(self) -> Path:
        return self.work / "bundle-fp16"


@dataclass
class Reference:
    """The trained model on the CPU and what every comparison decodes with it."""

    model: Any  # the checkpoint's CaptionModel, on the CPU
    vocab: Any  # its Vocabulary
    images: np.ndarray  # (32, 3, H, W), preprocessed as the runtime does
    greedy: Any  # greedy DecodingOptions at the checkpoint's max_length

    @classmethod
    def load(cls, run_dir: Path) -> "Reference":
        from capkit.export.checks import sample_images
        from capkit.runtime import DecodingOptions
        from capkit.training.checkpoint import load_model

        model, vocab, spec, payload = load_model(run_dir)
        return cls(model, vocab, sample_images(spec), DecodingOptions(max_length=int(payload["max_length"])))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU (CI mode)")
    parser.add_argument("--steps", type=int, default=None, help="training steps [default: 40 on CUDA, 8 on the CPU]")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args()
    args.steps = args.steps or (8 if args.cpu else 40)
    return args


def machine() -> str:
    import onnxruntime as ort
    import torch

    return (f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
            + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
            + f"; onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}")


def check_training(ctx: Context) -> tuple[str, bool]:
    from capkit.models import CaptionModelConfig
    from capkit.training.config import TrainConfig
    from capkit.training.train import train

    started = time.perf_counter()
    epochs = -(-ctx.steps // 8)  # 256 training images, batch 32: 8 steps an epoch
    result = train(TrainConfig(data=str(ctx.data), epochs=epochs, max_steps=ctx.steps, batch_size=32, device=ctx.device,
                               out=str(ctx.run_dir.parent), name=ctx.run_dir.name, progress=False),
                   CaptionModelConfig(vocab_size=5, encoder="resnet18", embed_dim=64, hidden_dim=128),
                   status=lambda message: None)
    seconds = time.perf_counter() - started
    loss = result.history[-1]["train_loss"]
    return f"{result.history[-1]['step']} steps on {ctx.device} in {seconds:.1f} s, train loss {loss:.3f}", \
        bool(np.isfinite(loss))


def check_torch_parity(ctx: Context, ref: Reference) -> tuple[str, bool]:
    from capkit.runtime import decode
    from capkit.training.checkpoint import load_model
    from capkit.training.torch_inference import TorchInference

    model_dev, *_ = load_model(ctx.run_dir, device=ctx.device)
    cpu, dev = TorchInference(ref.model, "cpu"), TorchInference(model_dev, ctx.device)
    err = max_abs(host(s.cpu() for s in cpu.encode(ref.images)), host(s.cpu() for s in dev.encode(ref.images)))
    equal = sum(a.tokens == b.tokens for a, b in zip(decode(cpu, ref.images, ref.greedy, ref.vocab),
                                                      decode(dev, ref.images, ref.greedy, ref.vocab)))
    return f"state max abs {err:.1e}; greedy equal {equal}/{len(ref.images)}", \
        err <= GRAPH_TOLERANCE and equal >= MIN_GREEDY_EQUAL


def check_export(ctx: Context) -> tuple[str, bool]:
    from capkit.export.onnx_export import export_checkpoint

    report = export_checkpoint(ctx.run_dir, ctx.bundle, fp16=True)
    parity = report.parity
    return (f"parity vs PyTorch (CPU provider): greedy {parity.greedy_equal}/{parity.images}, "
            f"sampled {parity.sampled_equal}/{parity.images}, step err {max(parity.step_max_abs.values()):.1e}; "
            f"fp16 greedy equal to fp32 {report.variants[0].greedy_equal}/{report.variants[0].images}"), report.passed


def check_ort_parity(ctx: Context, ref: Reference, bundle: Any, source: Any, label: str) -> tuple[str, bool]:
    """ONNX Runtime on the device with ``source`` against the fp32 ``bundle`` on the CPU; fp16 is
    reported, held only to running on the device."""
    from capkit.runtime import decode
    from capkit.runtime.onnx_inference import OnnxInference

    cpu = OnnxInference(bundle, device="cpu")
    dev = OnnxInference(source, device=ctx.device)
    state_cpu, state_dev = cpu.encode(ref.images), dev.encode(ref.images)
    err = max_abs(host(state_cpu), host(state_dev))
    tokens = np.full(len(ref.images), ref.vocab.start_id, np.int64)
    logits_cpu, _ = cpu.step(tokens, state_cpu)
    logits_dev, _ = dev.step(tokens, state_dev)
    step_err = max_abs([logits_cpu], [logits_dev])
    equal = sum(a.tokens == b.tokens for a, b in zip(decode(cpu, ref.images, ref.greedy, ref.vocab),
                                                      decode(dev, ref.images, ref.greedy, ref.vocab)))
    measured = (f"device {dev.device}, io_binding {dev.io_binding}; state max abs {err:.1e}, logits max abs "
                f"{step_err:.1e}; greedy equal {equal}/{len(ref.images)}")
    if label == "fp16":
        return measured, dev.device == ctx.device
    return measured, dev.device == ctx.device and err <= GRAPH_TOLERANCE and step_err <= GRAPH_TOLERANCE \
        and equal >= MIN_GREEDY_EQUAL


def check_threads(ctx: Context, ref: Reference, bundle: Any) -> tuple[str, bool]:
    from capkit.runtime import Captioner

    captioner = Captioner(bundle, device=ctx.device)  # I/O binding by default on CUDA
    images = ref.images
    chunks = [[np.ascontiguousarray((images[i] * 40 + 128).clip(0, 255).astype(np.uint8).transpose(1, 2, 0))
               for i in range(k, IMAGES, 8)] for k in range(8)]
    alone = [[c.tokens for c in captioner.caption_batch(chunk, temperature=0.7, seed=k)]
             for k, chunk in enumerate(chunks)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda k: [c.tokens for c in captioner.caption_batch(chunks[k], temperature=0.7,
                                                                                       seed=k)], range(8)))
    same = sum(a == b for a, b in zip(alone, together))
    return f"8 threads, one Captioner (io_binding {captioner.inference.io_binding}): {same}/8 chunks as " \
           f"sequential", same == 8


def check_command(ctx: Context, image: Path, model: Path) -> tuple[str, bool]:
    proc = subprocess.run(capkit("caption", str(image), "--model", str(model), "--device", ctx.device, "--json"),
                          capture_output=True, text=True, timeout=300)
    caption = json.loads(proc.stdout)["caption"] if proc.returncode == 0 else proc.stderr.strip()[-160:]
    return f"exit {proc.returncode}: {caption!r}", proc.returncode == 0


def check_bench(ctx: Context) -> tuple[str, bool]:
    proc = subprocess.run(capkit("bench", "--model", str(ctx.bundle), "--model", str(ctx.fp16_bundle),
                                 "--checkpoint", str(ctx.run_dir), "--device", ctx.device, "--batch-sizes", "1,8",
                                 "--repeats", "3", "--warmup", "1", "--cold-runs", "1", "--json"),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return proc.stderr.strip()[-200:], False
    report = json.loads(proc.stdout)
    parts = [f"{t['name']} ({t['device']}): caption {t['caption_ms']['median']:.1f} ms, step "
             f"{t['step_ms']['median']:.3f} ms, b8 {t['throughput']['8']['median']:.0f} img/s"
             for t in report["targets"]]
    return "; ".join(parts), True


def run_checks(checks: Checks, ctx: Context) -> None:
    """Every step in order; a step's bundle or model that the next ones need must exist by then."""
    from capkit.runtime import load_bundle

    device = ctx.device
    checks.run("train (capkit.training.train)", lambda: check_training(ctx))
    ref = Reference.load(ctx.run_dir)
    checks.run(f"PyTorch {device} vs CPU", lambda: check_torch_parity(ctx, ref))
    checks.run("export (fp32 + fp16)", lambda: check_export(ctx))
    bundle, fp16 = load_bundle(ctx.bundle), load_bundle(ctx.fp16_bundle)
    checks.run(f"ONNX Runtime fp32 {device} vs CPU", lambda: check_ort_parity(ctx, ref, bundle, bundle, "fp32"))
    checks.run(f"ONNX Runtime fp16 {device} vs fp32 CPU", lambda: check_ort_parity(ctx, ref, bundle, fp16, "fp16"))
    checks.run("shared Captioner, 8 threads", lambda: check_threads(ctx, ref, bundle))
    image = sorted((ctx.data / "images").iterdir())[0]
    checks.run(f"capkit caption --device {device} (fp32)", lambda: check_command(ctx, image, ctx.bundle))
    checks.run(f"capkit caption --device {device} (fp16)", lambda: check_command(ctx, image, ctx.fp16_bundle))
    checks.run(f"capkit bench --device {device}", lambda: check_bench(ctx))


def main() -> int:
    args = parse_args()
    device = "cpu" if args.cpu else "cuda"
    import torch

    from capkit.training.synthetic import generate_synthetic

    checks = Checks()
    checks.record("machine", machine(), None)
    if device == "cuda" and not torch.cuda.is_available():
        checks.record("cuda", "PyTorch sees no GPU: run with --cpu, or on a machine with one", False)
        print(checks.table())
        return 1
    ctx = Context(device, args.steps, Path(tempfile.mkdtemp(prefix="capkit-gpu-check-")))
    generate_synthetic(ctx.data, count=320, seed=0, image_size=64)
    run_checks(checks, ctx)
    print(json.dumps({"device": device, "checks": checks.rows}) if args.json else checks.table())
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
