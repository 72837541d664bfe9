"""ONNX Runtime's side of a device: session options, the execution providers, and whether CUDA is usable here.

:func:`session_options` builds the options every capkit session uses (threads, spinning, graph
optimisation, ORT-format loading). :func:`choose_device` decides between the CPU and CUDA for
``device`` "auto", "cpu" or "cuda" (and allows "openvino" where ONNX Runtime lists its OpenVINO
provider): the CUDA provider being listed is not enough (the GPU package installs it on machines
without a GPU), so "auto" asks a real session, and only where an NVIDIA driver is present; without
one it runs on the CPU without a word, as nothing is wrong.
:class:`~capkit.runtime.onnx_inference.OnnxInference` builds its sessions with these.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import sys
import warnings
from typing import Callable, Iterator, Optional

import onnxruntime as ort

from capkit.runtime.errors import CapkitError, check_int
from capkit.runtime.limits import DEFAULT_LIMITS, Limits

CPU, CUDA, OPENVINO = "CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"
# "openvino": the encoder graph on ONNX Runtime's OpenVINO execution provider (the onnxruntime-openvino package, in
# place of onnxruntime-gpu: capkit[openvino]), on the CPU; the step graph on the CPU provider (docs/openvino.md)
DEVICES = ("auto", "cpu", "cuda", "openvino")
GRAPH_OPTIMIZATIONS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
QUIET = 3  # ONNX Runtime log severity for our sessions: errors only (no "nodes not assigned to CUDA" notices)
SILENT = 4  # while probing CUDA: fatal only (the CUDA provider logs its load failure as an error)
DEFAULT_SEVERITY = 2  # ONNX Runtime's default logger severity (warnings)
DEFAULT_SPIN_US = 200  # how long an idle intra-op thread spins before it sleeps (see OnnxInference)
SPIN_DURATION_SINCE = (1, 27)  # the first ONNX Runtime with session.intra_op.spin_duration_us
LOAD_MODEL_FORMAT = "session.load_model_format"  # "ORT": the session reads the file as an ORT-format model only
WSL_DRIVER_LIBRARIES = "/usr/lib/wsl/lib/libcuda.so*"  # WSL 2: the Windows NVIDIA driver's CUDA library, shared in


class RuntimeUnavailableError(CapkitError):
    """The requested device (or ONNX Runtime provider) cannot be used here; one line naming it."""


class CpuFallbackWarning(RuntimeWarning):
    """``device="auto"`` found an NVIDIA driver and the CUDA provider, but CUDA unusable, and runs on the CPU."""


def check_threads(threads: Optional[int], name: str = "threads", limits: Limits = DEFAULT_LIMITS) -> Optional[int]:
    """An intra-op thread count: None (ONNX Runtime's default) or an integer from 1 to
    ``limits.max_threads`` (LimitError above it: a million threads must never reach ONNX Runtime)."""
    threads = check_int(threads, name, optional=True)
    if threads is not None:
        limits.check("max_threads", threads, name)
    return threads


def check_device(device: str) -> str:
    """``device`` when it is one of DEVICES, else RuntimeUnavailableError naming them."""
    if device not in DEVICES:
        raise RuntimeUnavailableError(f"unknown device {device!r}; one of {', '.join(DEVICES)}")
    return device


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def session_options(threads: Optional[int], graph_optimization: str,
                    spin_us: Optional[int] = DEFAULT_SPIN_US, limits: Limits = DEFAULT_LIMITS,
                    graph_format: str = "onnx") -> ort.SessionOptions:
    """ONNX Runtime session options. ``threads``: intra-op threads, at most ``limits.max_threads``
    (LimitError). ``spin_us``: how long idle intra-op threads spin before they
    sleep (0: never; None: ONNX Runtime's default, which spins much longer). An ONNX Runtime too old
    to bound the spin gets no spinning instead. ``graph_format`` "ort": the session loads the graph
    as an ORT-format model only (``session.load_model_format = ORT``), as ONNX Runtime Mobile does."""
    if graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise CapkitError(f"unknown graph optimization {graph_optimization!r}; one of {', '.join(GRAPH_OPTIMIZATIONS)}")
    check_threads(threads, limits=limits)
    if spin_us is not None and (isinstance(spin_us, bool) or not isinstance(spin_us, int) or spin_us < 0):
        raise CapkitError(f"spin must be an integer >= 0 (microseconds), got {spin_us!r}")
    if graph_format not in ("onnx", "ort"):
        raise CapkitError(f"unknown graph format {graph_format!r}; onnx or ort")
    options = ort.SessionOptions()
    if graph_format == "ort":
        options.add_session_config_entry(LOAD_MODEL_FORMAT, "ORT")
    options.graph_optimization_level = GRAPH_OPTIMIZATIONS[graph_optimization]
    options.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default (one per physical core)
    options.log_severity_level = QUIET
    if spin_us is not None:
        bounded = spin_us > 0 and _version(ort.__version__) >= SPIN_DURATION_SINCE
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if bounded else "0")
        if bounded:
            options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    return options


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA driver is installed here, seen without loading anything: on Linux its control
    device (or, under WSL 2, the Windows driver's CUDA library), on Windows its nvcuda.dll; elsewhere
    assumed (a session then tells)."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/dev/nvidiactl") or bool(glob.glob(WSL_DRIVER_LIBRARIES))
    if sys.platform == "win32":
        return os.path.exists(os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvcuda.dll"))
    return True


def preload_cuda_libraries() -> bool:
    """ONNX Runtime's own ``preload_dlls``: loads the CUDA and cuDNN libraries from the NVIDIA pip
    packages (or PyTorch's) when the loader's search path lacks them, so that ``--device cuda`` works
    in a plain virtual environment without torch imported first. It prints its notices, so they are
    kept off stdout (which carries captions). True when the call ran."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            preload()
    except Exception:  # a library that will not load: the CUDA probe that follows says so
        return False
    return True


@contextlib.contextmanager
def silent_ort_logger() -> Iterator[None]:
    """ONNX Runtime's default logger at fatal only, then back at its default (it has no getter): while
    probing CUDA, whose provider logs its load failures as errors (capkit says it once instead)."""
    ort.set_default_logger_severity(SILENT)
    try:
        yield
    finally:
        ort.set_default_logger_severity(DEFAULT_SEVERITY)


def choose_device(device: str, cuda_works: Callable[[], bool]) -> str:
    """The device to build sessions for, "cpu", "cuda" or "openvino", given ``device`` (one of DEVICES) and
    ``cuda_works``, which builds a session and tells whether it really gets the CUDA provider.

    "cuda" is CUDA or RuntimeUnavailableError. "auto" is CUDA where it works, else the CPU: without a
    word where no GPU is expected (a CPU-only ONNX Runtime, or the GPU package on a machine without an
    NVIDIA driver, where nothing is probed), with one :class:`CpuFallbackWarning` where a driver is
    present and CUDA still fails (missing CUDA or cuDNN libraries: something to fix). "openvino" is
    itself where ONNX Runtime lists its OpenVINO provider, else RuntimeUnavailableError."""
    if check_device(device) == "cpu":
        return "cpu"
    if device == "openvino":
        if OPENVINO not in ort.get_available_providers():
            raise RuntimeUnavailableError("device openvino: this ONNX Runtime has no OpenVINO execution provider "
                                          "(pip install onnxruntime-openvino in place of onnxruntime-gpu)")
        return "openvino"
    if CUDA not in ort.get_available_providers():
        if device == "cuda":
            raise RuntimeUnavailableError("device cuda: this ONNX Runtime has no CUDA provider "
                                          "(pip install onnxruntime-gpu)")
        return "cpu"  # a CPU-only ONNX Runtime: the CPU is expected
    driver = nvidia_driver_present()
    if device == "auto" and not driver:
        return "cpu"  # the GPU package on a machine without an NVIDIA GPU: the CPU is expected
    # The provider is listed; only a session tells whether it loads (GPU, CUDA and cuDNN libraries).
    if cuda_works() or (driver and preload_cuda_libraries() and cuda_works()):
        return "cuda"
    if device == "cuda":
        reason = ("the CUDA/cuDNN libraries it needs are missing, or the GPU is not usable" if driver
                  else "no NVIDIA driver found")
        raise RuntimeUnavailableError(f"device cuda: ONNX Runtime cannot use CUDA here ({reason}); use --device cpu")
    warnings.warn("capkit: an NVIDIA driver is present, but ONNX Runtime cannot use CUDA (CUDA/cuDNN libraries "
                  "missing, or the GPU is not usable); running on the CPU", CpuFallbackWarning, stacklevel=4)
    return "cpu"


def available_devices() -> list[str]:
    """The devices this ONNX Runtime lists a provider for (listed is not the same as usable)."""
    listed = ort.get_available_providers()
    return ["cpu"] + (["cuda"] if CUDA in listed else []) + (["openvino"] if OPENVINO in listed else [])


__all__ = ["CPU", "CUDA", "OPENVINO", "CpuFallbackWarning", "DEFAULT_SPIN_US", "DEVICES", "GRAPH_OPTIMIZATIONS",
           "LOAD_MODEL_FORMAT", "RuntimeUnavailableError", "available_devices", "check_device", "check_threads",
           "choose_device", "nvidia_driver_present", "preload_cuda_libraries", "session_options", "silent_ort_logger"]
