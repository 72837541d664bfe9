"""Cold starts: the wall time and peak resident memory of fresh ``capkit caption`` processes.

Standard library only: the measured process is started by a small launcher (:data:`LAUNCHER`)
so that its peak memory is its own, not the benchmark's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from capkit.bench.report import ColdStart
from capkit.bench.stats import BenchError, Stats

DEFAULT_COLD_RUNS = 3


def capkit_executable() -> list[str]:
    """The ``capkit`` console script next to this interpreter, else ``python -m capkit``."""
    script = Path(sys.executable).with_name("capkit")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "capkit"]


def caption_command(image: str, args: Sequence[str] = ()) -> list[str]:
    """``capkit caption IMAGE ARGS...``, e.g. ARGS ``--model B --device D [--threads N]`` or ``--checkpoint CKPT ...``."""
    return [*capkit_executable(), "caption", str(image), *args]


# The launcher: a bare interpreter (-S -I: no site, no user paths) that starts the measured process,
# waits for it with os.wait4 and writes its wall time, exit status and ru_maxrss to a file. Linux
# counts in a child's ru_maxrss the memory of the process it was forked from (the high-water mark
# of the parent's address space is carried through fork/vfork and exec), so a child forked from the
# benchmark itself (torch loaded, say) would report at least the benchmark's own memory. Forked from
# the launcher, it carries only the launcher's, a bare interpreter's.
LAUNCHER = """
import json, os, subprocess, sys, threading, time
command, report, timeout = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
started = time.perf_counter()
proc = subprocess.Popen(command)
timer = threading.Timer(timeout, proc.kill)
timer.start()
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - started
timer.cancel()
scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0
with open(report, "w") as f:
    json.dump({"wall": wall, "status": os.waitstatus_to_exitcode(status), "peak_mb": usage.ru_maxrss / scale}, f)
"""


def run_child(command: Sequence[str], timeout: float = 300.0, env: Optional[dict[str, str]] = None
              ) -> tuple[float, Optional[float], int, str, str]:
    """Runs ``command`` to its end: (wall seconds, peak resident memory in MB of that process or
    None, exit status, stdout, stderr). Where ``os.wait4`` exists the command is started by a small
    launcher process that times it and reads its ``ru_maxrss`` (the figure then includes at most the
    launcher's own, a bare interpreter's; see :data:`LAUNCHER`); elsewhere only the wall time is measured."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory(prefix="capkit-bench-") as tmp:
        if not hasattr(os, "wait4"):  # pragma: no cover - Windows
            started = time.perf_counter()
            proc = subprocess.run(list(command), stdout=out, stderr=err, env=env, timeout=timeout)
            wall, peak, status = time.perf_counter() - started, None, proc.returncode
        else:
            report = Path(tmp, "report.json")
            launcher = [sys.executable, "-S", "-I", "-c", LAUNCHER, json.dumps(list(command)), str(report),
                        str(timeout)]
            subprocess.run(launcher, stdout=out, stderr=err, env=env, timeout=timeout + 30)
            if not report.is_file():
                raise BenchError(f"`{' '.join(command)}` could not be started")
            measured = json.loads(report.read_text())
            wall, peak, status = float(measured["wall"]), float(measured["peak_mb"]), int(measured["status"])
        out.seek(0)
        err.seek(0)
        return wall, peak, status, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def cold_start(command: Sequence[str], runs: int = DEFAULT_COLD_RUNS) -> ColdStart:
    """``runs`` fresh processes of ``command`` (after one untimed run that warms the OS file cache)."""
    if runs < 1:
        raise BenchError(f"cold-start runs must be >= 1, got {runs}")
    walls, peaks, output = [], [], ""
    for index in range(runs + 1):
        wall, peak, status, stdout, stderr = run_child(command)
        if status != 0:
            last = (stderr.strip().splitlines() or [f"exit status {status}"])[-1]
            raise BenchError(f"cold start: `{' '.join(command)}` failed ({last})")
        if index == 0:
            continue
        walls.append(wall)
        if peak is not None:
            peaks.append(peak)
        output = stdout.strip()
    return ColdStart(list(command), Stats.of(walls, scale=1.0, unit="s"), max(peaks) if peaks else None, output)


__all__ = ["DEFAULT_COLD_RUNS", "LAUNCHER", "caption_command", "capkit_executable", "cold_start", "run_child"]
