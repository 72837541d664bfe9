"""Figures of repeated runs: :class:`Stats` (median and 90th percentile), :func:`measure`, and
:func:`machine_info`, the machine a report was measured on. Standard library and numpy only."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from capkit.runtime.errors import CapkitError


class BenchError(CapkitError):
    """A benchmark that cannot run as asked; one line naming the problem."""


@dataclass(frozen=True)
class Stats:
    """Median and 90th percentile of ``runs`` samples, in ``unit``."""

    median: float
    p90: float
    runs: int
    unit: str = "ms"

    @classmethod
    def of(cls, samples: Sequence[float], scale: float = 1e3, unit: str = "ms") -> "Stats":
        """The figures of ``samples`` times ``scale`` (seconds to ms by default)."""
        if not len(samples):
            raise BenchError("no samples to summarise")
        values = np.asarray(samples, dtype=np.float64) * scale
        return cls(float(np.median(values)), float(np.percentile(values, 90)), len(values), unit)

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "p90": self.p90, "runs": self.runs, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stats":
        return cls(float(data["median"]), float(data["p90"]), int(data["runs"]), str(data.get("unit", "ms")))


def check_rounds(repeats: int, warmup: int) -> None:
    if repeats < 1 or warmup < 0:
        raise BenchError(f"repeats must be >= 1 and warm-up >= 0, got {repeats} and {warmup}")


def measure(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` calls not timed, then ``repeats`` timed ones."""
    check_rounds(repeats, warmup)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load average and package versions (read from package metadata: nothing is imported)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for package in ("capkit", "numpy", "onnxruntime", "onnxruntime-gpu", "pillow", "torch", "torchvision"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "platform": platform.platform(),
            "load_average": load_average(), "versions": versions}


def load_average() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


__all__ = ["BenchError", "Stats", "check_rounds", "load_average", "machine_info", "measure"]
