"""runtime/providers.py: the choice between the CPU and CUDA (quiet where no GPU is expected, one warning
where one should work and does not), the NVIDIA driver check and the thread-count check. The choice is
exercised with ONNX Runtime's provider list, the driver check and the CUDA probe replaced, so that every
branch runs on any machine."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from capkit.runtime import providers  # noqa: E402
from capkit.runtime.errors import CapkitError  # noqa: E402
from capkit.runtime.limits import LimitError, Limits  # noqa: E402
from capkit.runtime.providers import (CPU, CUDA, CpuFallbackWarning, RuntimeUnavailableError,  # noqa: E402
                                      check_threads, choose_device)


class Probe:
    """A stand-in for OnnxInference._cuda_works: answers ``results`` in turn and counts its calls."""

    def __init__(self, *results: bool):
        self.results, self.calls = list(results), 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.results.pop(0)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """``machine(listed=..., driver=..., preload=...)``: what ONNX Runtime lists, whether an NVIDIA driver
    is present, whether preloading the CUDA libraries runs; ``machine.preloads`` counts preload calls."""
    class Machine:
        preloads = 0

        def __call__(self, listed: bool, driver: bool, preload: bool = False) -> "Machine":
            monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU] if listed else [CPU])
            monkeypatch.setattr(providers, "nvidia_driver_present", lambda: driver)

            def preload_cuda_libraries() -> bool:
                self.preloads += 1
                return preload

            monkeypatch.setattr(providers, "preload_cuda_libraries", preload_cuda_libraries)
            return self

    return Machine()


def choose(device: str, probe: Probe) -> tuple[str, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = choose_device(device, probe)
    return chosen, list(caught)


@pytest.mark.parametrize("listed", [True, False])
def test_auto_is_quiet_where_no_gpu_is_expected(machine, listed: bool) -> None:
    """The GPU package without an NVIDIA driver, or a CPU-only ONNX Runtime: the CPU, no warning, no probe."""
    machine(listed=listed, driver=False)
    probe = Probe()
    assert choose("auto", probe) == ("cpu", [])
    assert probe.calls == 0 and machine.preloads == 0


def test_auto_uses_cuda_where_it_works(machine) -> None:
    machine(listed=True, driver=True)
    assert choose("auto", Probe(True)) == ("cuda", [])


def test_auto_preloads_the_libraries_and_probes_again(machine) -> None:
    machine(listed=True, driver=True, preload=True)
    probe = Probe(False, True)
    assert choose("auto", probe) == ("cuda", []) and probe.calls == 2 and machine.preloads == 1


def test_auto_warns_once_where_a_gpu_should_work_and_does_not(machine) -> None:
    machine(listed=True, driver=True, preload=True)
    chosen, caught = choose("auto", Probe(False, False))
    assert chosen == "cpu" and len(caught) == 1 and issubclass(caught[0].category, CpuFallbackWarning)
    message = str(caught[0].message)
    assert "running on the CPU" in message and "NVIDIA driver is present" in message and "\n" not in message


def test_cuda_asked_for_is_an_error_where_it_does_not_work(machine) -> None:
    machine(listed=False, driver=True)
    with pytest.raises(RuntimeUnavailableError, match="no CUDA provider"):
        choose_device("cuda", Probe())
    machine(listed=True, driver=False)
    probe = Probe(False)
    with pytest.raises(RuntimeUnavailableError, match=r"device cuda: .*no NVIDIA driver found.*--device cpu"):
        choose_device("cuda", probe)
    assert probe.calls == 1 and machine.preloads == 0  # asked for: probed all the same, nothing preloaded
    machine(listed=True, driver=True, preload=False)
    with pytest.raises(RuntimeUnavailableError, match="CUDA/cuDNN libraries"):
        choose_device("cuda", Probe(False))
    assert choose("cuda", Probe(True)) == ("cuda", [])


def test_cpu_and_unknown_devices(machine) -> None:
    machine(listed=True, driver=True)
    probe = Probe()
    assert choose("cpu", probe) == ("cpu", []) and probe.calls == 0
    with pytest.raises(RuntimeUnavailableError, match="unknown device 'gpu'; one of auto, cpu, cuda, openvino"):
        choose_device("gpu", probe)


def test_the_command_line_offers_the_runtime_devices() -> None:
    from capkit.cli.options import DEVICE_CHOICES

    assert DEVICE_CHOICES == providers.DEVICES


def test_openvino_needs_its_provider_and_never_probes_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Probe()
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.raises(RuntimeUnavailableError) as refused:
        choose_device("openvino", probe)
    assert str(refused.value) == ("device openvino: this ONNX Runtime has no OpenVINO execution provider "
                                  "(pip install onnxruntime-openvino in place of onnxruntime-gpu)")
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [providers.OPENVINO, CPU])
    assert choose("openvino", probe) == ("openvino", []) and probe.calls == 0
    assert providers.available_devices() == ["cpu", "openvino"]


WINDOWS_DRIVER = os.path.join("C:\\Windows", "System32", "nvcuda.dll")  # as this machine's os.path joins it


@pytest.mark.parametrize("platform, present, expected", [
    ("linux", {"/dev/nvidiactl"}, True),
    ("linux", {"/usr/lib/wsl/lib/libcuda.so.1"}, True),  # WSL 2: the Windows driver's library
    ("linux", {"/dev/dxg"}, False),  # WSL 2 with another vendor's GPU
    ("linux", set(), False),
    ("win32", {WINDOWS_DRIVER}, True),
    ("win32", set(), False),
    ("darwin", set(), True),  # not known: a session tells
])
def test_nvidia_driver_present(monkeypatch: pytest.MonkeyPatch, platform: str, present: set, expected: bool) -> None:
    with monkeypatch.context() as patch:  # os.path.exists is everyone's: patched for this one call only
        patch.setattr(providers.sys, "platform", platform)
        patch.setenv("SystemRoot", "C:\\Windows")
        patch.setattr(providers.os.path, "exists", lambda path: path in present)
        patch.setattr(providers.glob, "glob", lambda pattern: [p for p in present if p.startswith(pattern.rstrip("*"))])
        found = providers.nvidia_driver_present()
    assert found is expected


def test_check_threads() -> None:
    assert check_threads(None) is None and check_threads(np.int64(3)) == 3 and type(check_threads(np.int64(3))) is int
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(CapkitError, match=r"^threads must be an integer >= 1, got"):
            check_threads(bad)
    with pytest.raises(LimitError, match=r"step threads 9 is over the limit of 8 \(Limits.max_threads"):
        check_threads(9, "step threads", Limits(max_threads=8))
    assert check_threads(8, "step threads", Limits(max_threads=8)) == 8
