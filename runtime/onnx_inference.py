"""ONNX Runtime behind the decoding loop: :class:`OnnxInference` (numpy and onnxruntime only, no torch).

Two sessions are built once, one per graph of the bundle. A step feeds the token and the state
to ``decoder_step.onnx`` by the tensor names of the manifest, and gets the logits and the next
state back. Two ways to keep the state between steps:
- plain ``session.run``: the state is a tuple of numpy arrays (the CPU default);
- IO binding: the state is a tuple of ``OrtValue`` living on the session's device; each step binds
  the previous step's state outputs as inputs, and only the logits are copied to the host (the
  CUDA default; selectable on the CPU, where the tests exercise it).
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnxruntime as ort

from capkit.runtime.bundle import Bundle, BundleError, load_bundle
from capkit.runtime.decoding import greedy_from_logits
from capkit.runtime.errors import CapkitError

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
GRAPH_OPTIMIZATIONS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
QUIET = 3  # ONNX Runtime log severity for our sessions: errors only (no "nodes not assigned to CUDA" notices)
SILENT = 4  # while probing CUDA: fatal only (the CUDA provider logs its load failure as an error)
DEFAULT_SEVERITY = 2  # ONNX Runtime's default logger severity (warnings)

OrtState = tuple  # numpy arrays (plain run) or OrtValues (IO binding); each (layers, B, hidden)
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


class RuntimeUnavailableError(CapkitError):
    """The requested device (or ONNX Runtime provider) cannot be used here; one line naming it."""


class CpuFallbackWarning(RuntimeWarning):
    """``device="auto"`` found the CUDA provider listed but unusable and runs on the CPU."""


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _check_threads(threads: Optional[int], name: str = "threads") -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise CapkitError(f"{name} must be an integer >= 1, got {threads!r}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


DEFAULT_SPIN_US = 200  # how long an idle intra-op thread spins before it sleeps (see OnnxInference)
SPIN_DURATION_SINCE = (1, 27)  # the first ONNX Runtime with session.intra_op.spin_duration_us


def session_options(threads: Optional[int], graph_optimization: str,
                    spin_us: Optional[int] = DEFAULT_SPIN_US) -> ort.SessionOptions:
    """ONNX Runtime session options. ``spin_us``: how long idle intra-op threads spin before they
    sleep (0: never; None: ONNX Runtime's default, which spins much longer). An ONNX Runtime too old
    to bound the spin gets no spinning instead."""
    if graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise CapkitError(f"unknown graph optimization {graph_optimization!r}; one of {', '.join(GRAPH_OPTIMIZATIONS)}")
    _check_threads(threads)
    if spin_us is not None and (isinstance(spin_us, bool) or not isinstance(spin_us, int) or spin_us < 0):
        raise CapkitError(f"spin must be an integer >= 0 (microseconds), got {spin_us!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = GRAPH_OPTIMIZATIONS[graph_optimization]
    options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (one per physical core)
    options.log_severity_level = QUIET
    if spin_us is not None:
        bounded = spin_us > 0 and _version(ort.__version__) >= SPIN_DURATION_SINCE
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if bounded else "0")
        if bounded:
            options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    return options


class BoundGreedySteps:
    """Greedy steps of the step graph at one batch size on the CPU, with host buffers bound once.

    Two buffer sets (token, log-probability, state) and two IO bindings that alternate: binding k
    reads set k's token and state and writes the next token, its log-probability and the next
    state into set 1 - k, which the following step reads. A chain of steps thus runs with no
    allocation, no feed dict, no binding and no copy: only ``run_with_iobinding``. A state or
    tokens that are not the previous step's buffers (the encoder's output, selected rows) are
    copied into set 0 first. The arrays a step returns are overwritten by the step after next.

    ``session``: the step graph's CPU session; ``token_name``, ``state_names``: its inputs;
    ``outputs``: next_token, next_logprob, then the next state's; ``state``: arrays of the state's shapes and
    dtype (each (L, B, H)).
    """

    def __init__(self, session: ort.InferenceSession, token_name: str, state_names: list[str], outputs: list[str],
                 state: OrtState):
        self.session = session
        self.batch = int(state[0].shape[1])
        types = {o.name: o.type for o in session.get_outputs()}
        logprob_type = NUMPY_TYPES.get(types[outputs[1]])
        if types[outputs[0]] != "tensor(int64)" or logprob_type is None:
            raise BundleError(f"{outputs[0]}/{outputs[1]}: unexpected types {types[outputs[0]]}/{types[outputs[1]]}")
        self.tokens = [np.zeros(self.batch, np.int64) for _ in range(2)]  # (B,) each
        self.logprobs = [np.zeros(self.batch, logprob_type) for _ in range(2)]  # (B,) each
        self.states = [tuple(np.zeros(s.shape, s.dtype) for s in state) for _ in range(2)]  # each (L, B, H)
        self.bindings = []
        for k in (0, 1):
            binding = session.io_binding()
            for name, array in ((token_name, self.tokens[k]), *zip(state_names, self.states[k])):
                binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            written = (self.tokens[1 - k], self.logprobs[1 - k], *self.states[1 - k])
            for name, array in zip(outputs, written):
                binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            self.bindings.append(binding)
        self._checked = [False, False]

    def run(self, tokens: np.ndarray, state: OrtState) -> tuple[np.ndarray, np.ndarray, OrtState]:
        """One greedy step: argmax int64 (B,), its log-softmax (B,) and the next state."""
        k = 0 if state is self.states[0] else 1 if state is self.states[1] else None
        if k is None:  # a state that is not a previous step's: into set 0
            k = 0
            for buffer, value in zip(self.states[0], state):
                np.copyto(buffer, value)  # (L, B, H)
        if tokens is not self.tokens[k]:
            np.copyto(self.tokens[k], tokens)  # (B,)
        self.session.run_with_iobinding(self.bindings[k])
        if not self._checked[k]:
            self._check(k)
        j = 1 - k
        return self.tokens[j], self.logprobs[j], self.states[j]

    def _check(self, k: int) -> None:
        """Once per binding: ONNX Runtime must have written into our buffers, not beside them."""
        written = (self.tokens[1 - k], self.logprobs[1 - k], *self.states[1 - k])
        for value, array in zip(self.bindings[k].get_outputs(), written):
            if value.data_ptr() != array.ctypes.data:
                raise CapkitError(f"ONNX Runtime {ort.__version__} did not write the greedy step's outputs into the bound "
                                  "buffers; use io_binding=True")
        self._checked[k] = True


class OnnxInference:
    """The runtime's :class:`~capkit.runtime.decoding.Inference` over a bundle's two ONNX graphs.

    ``device``: "cpu", "cuda" (RuntimeUnavailableError when CUDA does not work here) or "auto"
    (CUDA where a session really gets the CUDA provider, else the CPU with one warning).
    ``threads``: ONNX Runtime's intra-op threads for both graphs (None: its default, one per
    core). ``step_threads``: the decoder step graph's own (None: as ``threads``). ``spin_us``: how
    long an idle intra-op thread spins before it sleeps, in microseconds (0: never; None: ONNX
    Runtime's default). Each session has its own thread pool, and with ONNX Runtime's long default
    spin a pool keeps spinning after its run and competes with the other session's (the encoder of
    the next caption then runs on busy cores); with no spinning at all, steps wait for sleeping
    threads. DEFAULT_SPIN_US covers the Python between two steps, so a step's threads are still
    awake (`capkit bench --spin-us` measures the choice).
    ``graph_optimization``: disabled | basic | extended | all. ``optimized_model_dir``: a cache
    folder for the optimised graphs; a later start loads them with optimisation off, which is
    faster. ``io_binding``: keep the state on the device between steps (None: on for CUDA, off for
    the CPU).

    A bundle whose step graph computes the greedy choice (``next_token``/``next_logprob``, see
    docs/bundle.md) gets :meth:`greedy_step` from the graph; older bundles get it from the logits.
    On the CPU without IO binding, greedy steps run on buffers bound once per batch size
    (:class:`BoundGreedySteps`, one set per thread): what :meth:`greedy_step` returns is valid
    until the step after next, which is all a decode loop needs.
    """

    def __init__(self, bundle: Union[Bundle, str, os.PathLike], device: str = "auto", threads: Optional[int] = None,
                 graph_optimization: str = "all", optimized_model_dir: Union[str, os.PathLike, None] = None,
                 io_binding: Optional[bool] = None, *, step_threads: Optional[int] = None,
                 spin_us: Optional[int] = DEFAULT_SPIN_US):
        if device not in DEVICES:
            raise RuntimeUnavailableError(f"unknown device {device!r}; one of {', '.join(DEVICES)}")
        _check_threads(step_threads, "step threads")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.threads = {"encoder": threads, "decoder_step": threads if step_threads is None else step_threads}
        self.spin_us = spin_us
        self._options = {graph: session_options(n, graph_optimization, spin_us) for graph, n in self.threads.items()}
        self._optimization = graph_optimization
        self._cache = Path(optimized_model_dir) if optimized_model_dir is not None else None
        self.device, self._encoder, self._decoder = self._open(device)
        self.providers: list[str] = self._decoder.get_providers()
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self._device_id = 0
        self._check_names()
        enc, dec = self.bundle.manifest.encoder, self.bundle.manifest.decoder
        # Names and output lists are built once, here, not per step.
        self._image_name = enc.image_input
        self._encoder_outputs = list(enc.state_outputs)
        self._token_name = dec.token_input
        self._state_inputs = list(dec.state_inputs)
        self._decoder_outputs = [dec.logits_output, *dec.state_outputs]
        greedy = dec.greedy_outputs
        self._greedy_outputs = [*greedy, *dec.state_outputs] if greedy is not None else None
        if self.io_binding:
            self._encoder_binding = self._encoder.io_binding()
            self._decoder_binding = self._decoder.io_binding()
        self._local = threading.local()  # each thread's BoundGreedySteps (a session runs concurrently, buffers do not)

    # -- sessions -------------------------------------------------------------------------------
    def _session(self, path: Path, sha256: str, device: str, graph: str, cache: bool = True) -> ort.InferenceSession:
        providers = [(CUDA, {"device_id": 0}), CPU] if device == "cuda" else [CPU]
        options, cached, fresh = self._options[graph], None, None
        if cache and self._cache is not None and self._optimization != "disabled":
            self._cache.mkdir(parents=True, exist_ok=True)
            cached = self._cache / f"{path.stem}-{sha256[:16]}-{device}-{self._optimization}-ort{ort.__version__}.onnx"
            if cached.is_file():  # already optimised: load it as it is
                options = session_options(self.threads[graph], "disabled", self.spin_us)
                path, cached = cached, None
            else:
                fresh = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                options.optimized_model_filepath = str(fresh)
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # a corrupt graph, an operator this ONNX Runtime lacks, ...
            if fresh is not None:
                fresh.unlink(missing_ok=True)
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({_first_line(e)})") from None
        finally:
            options.optimized_model_filepath = ""
        if fresh is not None and fresh.is_file():
            os.replace(fresh, cached)  # whole files only, for concurrent starts
        return session

    def _sessions(self, device: str) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        manifest = self.bundle.manifest
        return (self._session(self.bundle.encoder_path, manifest.encoder.sha256, device, "encoder"),
                self._session(self.bundle.decoder_path, manifest.decoder.sha256, device, "decoder_step"))

    def _open(self, device: str) -> tuple[str, ort.InferenceSession, ort.InferenceSession]:
        if device == "cpu":
            return ("cpu", *self._sessions("cpu"))
        if CUDA not in ort.get_available_providers():
            if device == "cuda":
                raise RuntimeUnavailableError("device cuda: this ONNX Runtime has no CUDA provider "
                                              "(pip install onnxruntime-gpu)")
            return ("cpu", *self._sessions("cpu"))  # a CPU-only ONNX Runtime: the CPU is expected, no warning
        # The provider is listed; only a session tells whether it loads (GPU, CUDA and cuDNN libraries).
        manifest = self.bundle.manifest
        ort.set_default_logger_severity(SILENT)  # the provider's load failures are logged as errors; we say it once
        try:
            probe = self._session(self.bundle.decoder_path, manifest.decoder.sha256, "cuda", "decoder_step", cache=False)
        finally:
            ort.set_default_logger_severity(DEFAULT_SEVERITY)  # no getter: back to ONNX Runtime's default
        if probe.get_providers()[0] == CUDA:
            return ("cuda", *self._sessions("cuda"))
        if device == "cuda":
            raise RuntimeUnavailableError("device cuda: ONNX Runtime cannot use CUDA here (no GPU, or the CUDA/cuDNN "
                                          "libraries it needs are missing); use --device cpu")
        warnings.warn("capkit: CUDA is not usable by ONNX Runtime here (no GPU, or CUDA/cuDNN libraries missing); "
                      "running on the CPU", CpuFallbackWarning, stacklevel=3)
        return ("cpu", *self._sessions("cpu"))

    def _check_names(self) -> None:
        """The manifest's tensor names must be the graphs' own: a clear error instead of a failing run."""
        manifest = self.bundle.manifest
        for session, graph, inputs, outputs in (
                (self._encoder, manifest.encoder, [manifest.encoder.image_input], manifest.encoder.state_outputs),
                (self._decoder, manifest.decoder, [manifest.decoder.token_input, *manifest.decoder.state_inputs],
                 manifest.decoder.outputs)):
            have_in = {i.name for i in session.get_inputs()}
            have_out = {o.name for o in session.get_outputs()}
            missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
            if missing:
                raise BundleError(f"{self.bundle.folder}: {graph.file} has no tensor named {', '.join(missing)} "
                                  "(the manifest and the graph disagree)")

    # -- Inference ------------------------------------------------------------------------------
    def encode(self, images: np.ndarray) -> OrtState:
        images = np.ascontiguousarray(images, dtype=np.float32)  # (B, 3, H, W)
        if not self.io_binding:
            return tuple(self._encoder.run(self._encoder_outputs, {self._image_name: images}))  # each (L, B, H)
        binding = self._encoder_binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self._image_name, images)  # copied to the device
        for name in self._encoder_outputs:
            binding.bind_output(name, self.device, self._device_id)  # allocated on the device by ONNX Runtime
        self._encoder.run_with_iobinding(binding)
        return tuple(binding.get_outputs())  # OrtValues on the device, each (L, B, H)

    def step(self, tokens: np.ndarray, state: OrtState) -> tuple[np.ndarray, OrtState]:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)  # (B,)
        if not self.io_binding:
            feed = dict(zip(self._state_inputs, state))
            feed[self._token_name] = tokens
            logits, *state = self._decoder.run(self._decoder_outputs, feed)  # (B, V)
            return logits, tuple(state)
        binding = self._decoder_binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self._token_name, tokens)
        for name, value in zip(self._state_inputs, state):
            binding.bind_ortvalue_input(name, value)  # last step's output, still on the device
        binding.bind_output(self._decoder_outputs[0], "cpu")  # only the logits come to the host
        for name in self._decoder_outputs[1:]:
            binding.bind_output(name, self.device, self._device_id)
        self._decoder.run_with_iobinding(binding)
        logits, *state = binding.get_outputs()
        return logits.numpy(), tuple(state)  # (B, V)

    def greedy_step(self, tokens: np.ndarray, state: OrtState) -> tuple[np.ndarray, np.ndarray, OrtState]:
        """``step`` for greedy decoding: argmax(logits) int64 (B,), its log-softmax float64 (B,) and
        the next state. From the graph's ``next_token``/``next_logprob`` outputs when it has them
        (the logits then stay inside ONNX Runtime), else from the logits."""
        if self._greedy_outputs is None:
            logits, state = self.step(tokens, state)
            return (*greedy_from_logits(logits), state)
        if not self.io_binding:
            steps = getattr(self._local, "greedy", None)
            if steps is None or steps.batch != len(tokens):
                steps = self._local.greedy = BoundGreedySteps(self._decoder, self._token_name, self._state_inputs,
                                                              self._greedy_outputs, state)
            return steps.run(tokens, state)  # (B,), (B,), each (L, B, H)
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)  # (B,)
        binding = self._decoder_binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self._token_name, tokens)
        for name, value in zip(self._state_inputs, state):
            binding.bind_ortvalue_input(name, value)
        for name in self._greedy_outputs[:2]:  # only the (B,) choice comes to the host
            binding.bind_output(name, "cpu")
        for name in self._greedy_outputs[2:]:
            binding.bind_output(name, self.device, self._device_id)
        self._decoder.run_with_iobinding(binding)
        chosen, logprobs, *state = binding.get_outputs()
        return chosen.numpy(), logprobs.numpy(), tuple(state)

    def select(self, state: OrtState, rows: np.ndarray) -> OrtState:
        rows = np.asarray(rows, dtype=np.int64)  # (B',)
        if not self.io_binding:
            return tuple(np.ascontiguousarray(s[:, rows]) for s in state)  # each (L, B', H)
        # Rare (once per finished row, or per beam step): through the host and back.
        return tuple(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value.numpy()[:, rows]), self.device,
                                                      self._device_id) for value in state)  # each (L, B', H)

    def __repr__(self) -> str:
        return (f"OnnxInference({str(self.bundle.folder)!r}, device={self.device!r}, io_binding={self.io_binding}, "
                f"threads={self.threads})")


def available_devices() -> list[str]:
    """The devices this ONNX Runtime lists a provider for (listed is not the same as usable)."""
    return ["cpu"] + (["cuda"] if CUDA in ort.get_available_providers() else [])


__all__ = ["BoundGreedySteps", "CpuFallbackWarning", "DEFAULT_SPIN_US", "OnnxInference", "RuntimeUnavailableError", "available_devices", "session_options"]
