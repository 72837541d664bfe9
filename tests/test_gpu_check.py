"""scripts/gpu_check.sh in its CPU mode, as CI runs it: every step of the CUDA check (training,
export, parity, fp16, 8 threads, the caption command, the bench) runs and passes on the CPU, so the
script is ready for the next machine with a GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu() -> None:
    proc = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--cpu", "--json"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu"
    verdicts = {name: verdict for name, _, verdict in report["checks"]}
    assert len(verdicts) == 10 and verdicts.pop("machine") == "info"
    assert set(verdicts.values()) == {"ok"}, verdicts


def test_throughput_mode_runs_on_the_cpu(tmp_path: Path) -> None:
    """``--throughput`` (reports/cuda_throughput.py) on a small model: every target at every batch size, the
    profiles and the parity check come back; masked batches never select rows while the ragged model's
    dropping batches do; the MatMul cell's step graph has no LSTM node; the section renders them and the
    targets' ratios, and renders again the same from the saved measurements."""
    saved = tmp_path / "run.json"
    command = [str(REPO / "scripts" / "gpu_check.sh"), "--throughput", "--cpu", "--size", "small", "--rounds", "1",
               "--work", str(tmp_path / "work"), "--json", str(saved), "--print"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(saved.read_text())
    assert report["device"] == "cpu" and report["size"] == "small"
    rows = {(r["target"], r["batch"]): r for r in report["batches"]}
    names = {target for target, _ in rows}
    assert len(names) == 11 and {batch for _, batch in rows} == {1, 8, 32} and len(rows) == 33
    assert all(r["images_per_s"] > 0 and r["encoder_ms"] > 0 and r["step_ms"] > 0 for r in rows.values())
    assert all(r["selects"] == 0 for (target, _), r in rows.items() if "masked" in target)
    assert rows["ragged: onnx fp32 (today)", 32]["selects"] > 0  # its rows finish at different steps
    assert set(report["parity"].values()) == {"32/32"} and len(report["parity"]) == 9
    profile = report["profile"]
    assert "LSTM" in profile["fp32"]["kernel_us_per_step"] and "LSTM" not in profile["fp32-matmul"]["kernel_us_per_step"]
    assert any("All nodes placed on [CPUExecutionProvider]" in line for line in profile["fp32"]["placement_log"])
    assert report["files"]["preprocess_ms_per_image"] > 0 and report["files"]["pytorch eager"] > 0
    assert "cuda_graph" not in report  # CUDA only
    section = proc.stdout
    assert section.startswith("<!-- throughput:start -->") and section.rstrip().endswith("<!-- throughput:end -->")
    eager, today = rows["pytorch eager", 32]["images_per_s"], rows["onnx fp32 (today)", 32]["images_per_s"]
    assert f"against PyTorch eager: {today / eager:.2f}x" in section and "| ragged: onnx fp32, masked rows | 32 |" in section
    again = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--throughput", "--from-json", str(saved), "--print"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == section
