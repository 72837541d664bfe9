#!/usr/bin/env python
"""The CUDA paths, checked end to end in one short run: training steps, export, CUDA against CPU
parity of both graphs and of greedy captions, fp16, shared use from 8 threads, `capkit caption
--device cuda`, and `capkit bench` against PyTorch eager; one table at the end.

    scripts/gpu_check.sh            # on a machine with a GPU (ONNX Runtime's CUDA provider and torch.cuda)
    scripts/gpu_check.sh --cpu      # the same steps on the CPU: how CI keeps this script working

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
from pathlib import Path
from typing import Any, Callable

import numpy as np

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
            measured, ok = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}", False
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU (CI mode)")
    parser.add_argument("--steps", type=int, default=None, help="training steps [default: 40 on CUDA, 8 on the CPU]")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args()
    device = "cpu" if args.cpu else "cuda"
    args.steps = args.steps or (8 if args.cpu else 40)

    import onnxruntime as ort
    import torch

    from capkit.export.checks import sample_images
    from capkit.export.onnx_export import export_checkpoint
    from capkit.models import CaptionModelConfig
    from capkit.runtime import Captioner, DecodingOptions, decode, load_bundle
    from capkit.runtime.onnx_inference import OnnxInference
    from capkit.training.checkpoint import load_model
    from capkit.training.config import TrainConfig
    from capkit.training.synthetic import generate_synthetic
    from capkit.training.torch_inference import TorchInference
    from capkit.training.train import train

    checks = Checks()
    checks.record("machine", f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
                  + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
                  + f"; onnxruntime {ort.__version__}, providers {', '.join(ort.get_available_providers())}", None)
    if device == "cuda" and not torch.cuda.is_available():
        checks.record("cuda", "PyTorch sees no GPU: run with --cpu, or on a machine with one", False)
        print(checks.table())
        return 1
    work = Path(tempfile.mkdtemp(prefix="capkit-gpu-check-"))
    data = generate_synthetic(work / "data", count=320, seed=0, image_size=64)
    run_dir = work / "runs" / "check"

    def training() -> tuple[str, bool]:
        started = time.perf_counter()
        epochs = -(-args.steps // 8)  # 256 training images, batch 32: 8 steps an epoch
        result = train(TrainConfig(data=str(data), epochs=epochs, max_steps=args.steps, batch_size=32, device=device,
                                   out=str(work / "runs"), name="check", progress=False),
                       CaptionModelConfig(vocab_size=5, encoder="resnet18", embed_dim=64, hidden_dim=128),
                       status=lambda message: None)
        seconds = time.perf_counter() - started
        loss = result.history[-1]["train_loss"]
        return f"{result.history[-1]['step']} steps on {device} in {seconds:.1f} s, train loss {loss:.3f}", \
            bool(np.isfinite(loss))

    checks.run("train (capkit.training.train)", training)
    model_cpu, vocab, spec, payload = load_model(run_dir)
    images = sample_images(spec)  # (32, 3, H, W), preprocessed as the runtime does
    greedy = DecodingOptions(max_length=int(payload["max_length"]))
    ids = {"start_id": vocab.start_id, "end_id": vocab.end_id}

    def torch_parity() -> tuple[str, bool]:
        model_dev, *_ = load_model(run_dir, device=device)
        cpu, dev = TorchInference(model_cpu, "cpu"), TorchInference(model_dev, device)
        err = max_abs(host(s.cpu() for s in cpu.encode(images)), host(s.cpu() for s in dev.encode(images)))
        equal = sum(a.tokens == b.tokens for a, b in zip(decode(cpu, images, greedy, **ids),
                                                          decode(dev, images, greedy, **ids)))
        return f"state max abs {err:.1e}; greedy equal {equal}/{len(images)}", \
            err <= GRAPH_TOLERANCE and equal >= MIN_GREEDY_EQUAL

    checks.run(f"PyTorch {device} vs CPU", torch_parity)

    def export() -> tuple[str, bool]:
        report = export_checkpoint(run_dir, work / "bundle", fp16=True)
        parity = report.parity
        return (f"parity vs PyTorch (CPU provider): greedy {parity.greedy_equal}/{parity.images}, "
                f"sampled {parity.sampled_equal}/{parity.images}, step err {max(parity.step_max_abs.values()):.1e}; "
                f"fp16 greedy equal to fp32 {report.variants[0].greedy_equal}/{report.variants[0].images}"), report.passed

    checks.run("export (fp32 + fp16)", export)
    bundle = load_bundle(work / "bundle")
    fp16 = load_bundle(work / "bundle-fp16")

    def ort_parity(source: Any, label: str) -> Callable[[], tuple[str, bool]]:
        def check() -> tuple[str, bool]:
            cpu = OnnxInference(bundle, device="cpu")
            dev = OnnxInference(source, device=device)
            state_cpu, state_dev = cpu.encode(images), dev.encode(images)
            err = max_abs(host(state_cpu), host(state_dev))
            tokens = np.full(len(images), vocab.start_id, np.int64)
            logits_cpu, _ = cpu.step(tokens, state_cpu)
            logits_dev, _ = dev.step(tokens, state_dev)
            step_err = max_abs([logits_cpu], [logits_dev])
            equal = sum(a.tokens == b.tokens for a, b in zip(decode(cpu, images, greedy, **ids),
                                                              decode(dev, images, greedy, **ids)))
            measured = (f"device {dev.device}, io_binding {dev.io_binding}; state max abs {err:.1e}, logits max abs "
                        f"{step_err:.1e}; greedy equal {equal}/{len(images)}")
            if label == "fp16":
                return measured, dev.device == device
            return measured, dev.device == device and err <= GRAPH_TOLERANCE and step_err <= GRAPH_TOLERANCE \
                and equal >= MIN_GREEDY_EQUAL
        return check

    checks.run(f"ONNX Runtime fp32 {device} vs CPU", ort_parity(bundle, "fp32"))
    checks.run(f"ONNX Runtime fp16 {device} vs fp32 CPU", ort_parity(fp16, "fp16"))

    def threads() -> tuple[str, bool]:
        captioner = Captioner(bundle, device=device)  # I/O binding by default on CUDA
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

    checks.run("shared Captioner, 8 threads", threads)

    image = sorted((Path(data) / "images").iterdir())[0]

    def command(model: Path) -> Callable[[], tuple[str, bool]]:
        def check() -> tuple[str, bool]:
            proc = subprocess.run(capkit("caption", str(image), "--model", str(model), "--device", device, "--json"),
                                  capture_output=True, text=True, timeout=300)
            caption = json.loads(proc.stdout)["caption"] if proc.returncode == 0 else proc.stderr.strip()[-160:]
            return f"exit {proc.returncode}: {caption!r}", proc.returncode == 0
        return check

    checks.run(f"capkit caption --device {device} (fp32)", command(work / "bundle"))
    checks.run(f"capkit caption --device {device} (fp16)", command(work / "bundle-fp16"))

    def bench() -> tuple[str, bool]:
        proc = subprocess.run(capkit("bench", "--model", str(work / "bundle"), "--model", str(work / "bundle-fp16"),
                                     "--checkpoint", str(run_dir), "--device", device, "--batch-sizes", "1,8",
                                     "--repeats", "3", "--warmup", "1", "--cold-runs", "1", "--json"),
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return proc.stderr.strip()[-200:], False
        report = json.loads(proc.stdout)
        parts = [f"{t['name']} ({t['device']}): caption {t['caption_ms']['median']:.1f} ms, step "
                 f"{t['step_ms']['median']:.3f} ms, b8 {t['throughput']['8']['median']:.0f} img/s"
                 for t in report["targets"]]
        return "; ".join(parts), True

    checks.run(f"capkit bench --device {device}", bench)
    print(json.dumps({"device": device, "checks": checks.rows}) if args.json else checks.table())
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
