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
