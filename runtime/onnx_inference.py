"""ONNX Runtime behind the decoding loop: :class:`OnnxInference` (numpy and onnxruntime only, no torch).

Two sessions are built once, one per graph of the bundle. A step feeds the token and the state
to ``decoder_step.onnx`` by the tensor names of the manifest, and gets the logits and the next
state back. Two ways to keep the state between steps:
- plain ``session.run``: the state is a tuple of numpy arrays (the CPU default);
- IO binding: the state is a tuple of ``OrtValue`` living on the session's device; each step binds
  the previous step's state outputs as inputs, and only the logits are copied to the host (the
  CUDA default; selectable on the CPU, where the tests exercise it).

Thread safety: one OnnxInference may serve several threads in every configuration (CPU or CUDA,
with or without IO binding). ONNX Runtime sessions are safe for concurrent ``run`` and
``run_with_iobinding``; an ``IOBinding`` and bound host buffers are not (clearing and rebinding
them from two threads mixes one caption's state with another's, or frees a tensor in use). So
everything mutable per call lives in a per-thread store (:meth:`OnnxInference._thread`): the IO
bindings of both graphs and the :class:`BoundGreedySteps`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnxruntime as ort

from capkit.runtime.bundle import Bundle, load_bundle
from capkit.runtime.decoding import greedy_from_logits
from capkit.runtime.errors import CapkitError, first_line
from capkit.runtime.limits import DEFAULT_LIMITS, LimitError, Limits
from capkit.runtime.manifest import BundleError
from capkit.runtime.providers import (CPU, CUDA, DEFAULT_SPIN_US, OPENVINO, check_device, check_threads, choose_device,
                                      session_options, silent_ort_logger)

OrtState = tuple  # numpy arrays (plain run) or OrtValues (IO binding); each (layers, B, hidden)
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
               "tensor(float16)": np.float16}
MAX_BOUND_BATCHES = 8  # BoundGreedySteps kept per thread, one per batch size (the oldest goes first)


class BoundGreedySteps:
    """Greedy steps of the step graph at one batch size, with buffers bound once.

    Two buffer sets (token, log-probability, state) and two IO bindings that alternate: binding k
    reads set k's token and state and writes the next token, its log-probability and the next
    state into set 1 - k, which the following step reads. A chain of steps thus runs with no
    allocation, no feed dict and no binding: only ``run_with_iobinding``. The next token is fed
    back where the graph wrote it (on the device, for ``memory`` "cuda"), so a step sends nothing
    to the device when the tokens are the previous step's own (a batch that keeps its finished rows,
    :attr:`OnnxInference.mask_finished_rows`). Tokens that are not (``<start>``, selected rows) are
    copied into set k first; a state that is not a previous step's (the encoder's output, selected
    rows) is copied into set 0 when it is numpy arrays, and bound as it is for that one step when it
    is OrtValues. What a step returns is overwritten by the step after next.

    ``session``: the step graph's session; ``token_name``, ``state_names``: its inputs; ``outputs``:
    next_token, next_logprob, then the next state's; ``state``: arrays or OrtValues of the state's
    shapes and dtype (each (L, B, H)). ``memory``: where the buffers live ("cpu": numpy arrays that
    the steps return as they are, no copy; "cuda": device memory, of which only the (B,) token and
    log-probability are copied to the host). ``ortvalues``: return the state as OrtValues (IO binding)
    instead of numpy arrays (always OrtValues off the CPU).
    """

    def __init__(self, session: ort.InferenceSession, token_name: str, state_names: list[str], outputs: list[str],
                 state: OrtState, memory: str = "cpu", device_id: int = 0, ortvalues: bool = False):
        self.session, self.memory, self.device_id = session, memory, device_id
        self.batch = int(state[0].shape()[1] if isinstance(state[0], ort.OrtValue) else state[0].shape[1])
        types = {o.name: o.type for o in session.get_outputs()}
        logprob_type = NUMPY_TYPES.get(types[outputs[1]])
        if types[outputs[0]] != "tensor(int64)" or logprob_type is None:
            raise BundleError(f"{outputs[0]}/{outputs[1]}: unexpected types {types[outputs[0]]}/{types[outputs[1]]}")
        shapes = [(s.shape() if isinstance(s, ort.OrtValue) else s.shape) for s in state]  # each (L, B, H)
        state_type = NUMPY_TYPES[state[0].data_type()] if isinstance(state[0], ort.OrtValue) else state[0].dtype
        self.dtypes = [np.int64, logprob_type, *(state_type for _ in shapes)]  # of each buffer of a set
        # sets[k]: the (array or None, OrtValue) pairs of token (B,), log-probability (B,), each state tensor (L, B, H)
        self.sets = [[self._buffer(shape, dtype) for shape, dtype in zip([(self.batch,)] * 2 + shapes, self.dtypes)]
                     for _ in range(2)]
        host = memory == "cpu"
        self.returned_tokens = [array if host else None for array, _ in (s[0] for s in self.sets)]  # (B,) each
        self.returned_states = [tuple(value if ortvalues or not host else array for array, value in s[2:])
                                for s in self.sets]  # each (L, B, H)
        self.token_name, self.state_names = token_name, state_names
        self.bindings = [session.io_binding() for _ in range(2)]
        for k, binding in enumerate(self.bindings):
            self._bind_inputs(k)
            for name, (_, value) in zip(outputs, self.sets[1 - k]):
                binding.bind_ortvalue_output(name, value)
        self._checked = [False, False]

    def _buffer(self, shape: tuple, dtype: type) -> tuple[Optional[np.ndarray], ort.OrtValue]:
        """A buffer bound once: a numpy array and an OrtValue over its memory on the CPU, an OrtValue on a device."""
        if self.memory == "cpu":
            array = np.zeros(shape, dtype)
            return array, ort.OrtValue.ortvalue_from_numpy(array)
        return None, ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.memory, self.device_id)

    def _bind_inputs(self, k: int, state: Optional[OrtState] = None) -> None:
        """Binding k reads set k's token and ``state`` (None: set k's own state buffers)."""
        binding, buffers = self.bindings[k], self.sets[k]
        binding.bind_ortvalue_input(self.token_name, buffers[0][1])
        values = state if state is not None else [value for _, value in buffers[2:]]
        for name, value in zip(self.state_names, values):
            binding.bind_ortvalue_input(name, value)

    def run(self, tokens: np.ndarray, state: OrtState) -> tuple[np.ndarray, np.ndarray, OrtState]:
        """One greedy step: argmax int64 (B,), its log-softmax (B,) and the next state."""
        k = 0 if state is self.returned_states[0] else 1 if state is self.returned_states[1] else None
        foreign = k is None
        if foreign:  # a state that is not a previous step's
            k = 0
            if isinstance(state[0], ort.OrtValue):
                self._bind_inputs(0, state)  # for this step only: no copy on the device
            else:
                for (_, value), dtype, array in zip(self.sets[0][2:], self.dtypes[2:], state):
                    value.update_inplace(np.ascontiguousarray(array, dtype))  # (L, B, H), to the device off the CPU
                foreign = False
        if tokens is not self.returned_tokens[k]:
            self.sets[k][0][1].update_inplace(np.ascontiguousarray(tokens, np.int64))  # (B,)
        try:
            self.session.run_with_iobinding(self.bindings[k])
        finally:
            if foreign:
                self._bind_inputs(0)
        if not self._checked[k]:
            self._check(k)
        j = 1 - k
        (token_array, token_value), (logprob_array, logprob_value) = self.sets[j][:2]
        if self.memory != "cpu":  # only the (B,) choice comes to the host
            token_array, logprob_array = token_value.numpy(), logprob_value.numpy()
            self.returned_tokens[j] = token_array
        return token_array, logprob_array, self.returned_states[j]

    def _check(self, k: int) -> None:
        """Once per binding: ONNX Runtime must have written into our buffers, not beside them."""
        for got, (_, value) in zip(self.bindings[k].get_outputs(), self.sets[1 - k]):
            if got.data_ptr() != value.data_ptr():
                raise CapkitError(f"ONNX Runtime {ort.__version__} did not write the greedy step's outputs into the bound "
                                  "buffers; use io_binding=True")
        self._checked[k] = True


class OnnxInference:
    """The runtime's :class:`~capkit.runtime.decoding.Inference` over a bundle's two ONNX graphs.

    ``device``: "cpu", "cuda" (RuntimeUnavailableError when CUDA does not work here) or "auto"
    (CUDA where a session really gets the CUDA provider, else the CPU; quietly without an NVIDIA
    driver, with one CpuFallbackWarning where one is present: :func:`~capkit.runtime.providers.choose_device`), or
    "openvino": the encoder on ONNX Runtime's OpenVINO execution provider (onnxruntime-openvino installed in place
    of onnxruntime-gpu; RuntimeUnavailableError without it), the step graph on the CPU provider.
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
    faster (ignored for an ORT-format bundle, ``graph_format`` "ort" in its manifest: its graphs
    were optimised when written, and its sessions load them with ``session.load_model_format =
    ORT``, as ONNX Runtime Mobile does). ``io_binding``: keep the state on the device between steps (None: on for CUDA, off for
    the CPU). ``limits``: ``threads`` and ``step_threads`` above ``limits.max_threads`` raise
    LimitError before any session is built. ``mask_finished_rows``: a greedy batch keeps the rows
    that have finished (the decode loop ignores their tokens) instead of dropping them through the
    host, so that a batch steps at one shape from start to end, and, with IO binding, on device
    buffers bound once with the next token fed back on the device; off by default (on the CPU the
    finished rows' work is lost; on CUDA ``scripts/gpu_check.sh --throughput`` measures it).

    A bundle whose step graph computes the greedy choice (``next_token``/``next_logprob``, see
    docs/bundle.md) gets :meth:`greedy_step` from the graph; older bundles get it from the logits.
    On the CPU without IO binding, and with IO binding when finished rows are masked, greedy steps
    run on buffers bound once per batch size (:class:`BoundGreedySteps`, per thread): what
    :meth:`greedy_step` returns is valid until the step after next, which is all a decode loop needs.

    Thread safety: any number of threads may call one instance at once, on any device, with IO
    binding on or off. The sessions are shared (ONNX Runtime runs them concurrently); what a call
    mutates (IO bindings, bound buffers) belongs to the calling thread (:meth:`_thread`).
    """

    def __init__(self, bundle: Union[Bundle, str, os.PathLike], device: str = "auto", threads: Optional[int] = None,
                 graph_optimization: str = "all", optimized_model_dir: Union[str, os.PathLike, None] = None,
                 io_binding: Optional[bool] = None, *, step_threads: Optional[int] = None,
                 spin_us: Optional[int] = DEFAULT_SPIN_US, limits: Limits = DEFAULT_LIMITS,
                 mask_finished_rows: bool = False):
        check_device(device)
        if not isinstance(mask_finished_rows, (bool, np.bool_)):  # "no" would otherwise read as True
            raise CapkitError(f"mask_finished_rows must be True or False, got {type(mask_finished_rows).__name__}")
        if device == "openvino" and io_binding:  # the OpenVINO provider crashed the process on bound outputs (1.24.1)
            raise CapkitError("io_binding is not available with device openvino; leave it None or False")
        if not isinstance(limits, Limits):
            raise LimitError(f"limits must be a capkit Limits, got {type(limits).__name__}")
        check_threads(threads, "threads", limits)  # first: before the bundle is read or a session built
        check_threads(step_threads, "step threads", limits)
        self.limits = limits
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.threads = {"encoder": threads, "decoder_step": threads if step_threads is None else step_threads}
        self.spin_us = spin_us
        self.graph_format = self.bundle.manifest.graph_format  # "ort": ORT-format graphs, loaded as such only
        self._options = {graph: session_options(n, graph_optimization, spin_us, limits, self.graph_format)
                         for graph, n in self.threads.items()}
        self._optimization = graph_optimization
        # ORT-format graphs were optimised when they were written: no cache of optimised graphs for them
        self._cache = Path(optimized_model_dir) if optimized_model_dir is not None and self.graph_format == "onnx" else None
        self.device, self._encoder, self._decoder = self._open(device)
        self.providers: list[str] = self._decoder.get_providers()
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        # Read by the decode loop: a greedy batch keeps its finished rows (their tokens are not recorded)
        # instead of dropping them, so that every step of a batch runs at one shape, on buffers bound once.
        self.mask_finished_rows = bool(mask_finished_rows)
        self._memory = "cuda" if self.device == "cuda" else "cpu"  # where bound tensors live ("openvino": the host)
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
        # Per thread, not per instance: see _thread. (A lock around each call would also be safe, but
        # it would serialise every caption of every thread on one session that ONNX Runtime can run
        # concurrently; bindings are cheap, so each thread gets its own instead.)
        self._local = threading.local()

    # -- sessions -------------------------------------------------------------------------------
    def _session(self, path: Path, sha256: str, device: str, graph: str, cache: bool = True) -> ort.InferenceSession:
        providers = self._providers(device, graph)
        options, cached, fresh = self._options[graph], None, None
        compiled = any(isinstance(p, tuple) and p[0] == OPENVINO for p in providers)  # compiled nodes: not saved as a graph
        if cache and not compiled and self._cache is not None and self._optimization != "disabled":
            self._cache.mkdir(parents=True, exist_ok=True)
            cached = self._cache / f"{path.stem}-{sha256[:16]}-{device}-{self._optimization}-ort{ort.__version__}.onnx"
            if cached.is_file():  # already optimised: load it as it is
                options = session_options(self.threads[graph], "disabled", self.spin_us, self.limits)
                path, cached = cached, None
            else:
                fresh = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
                options.optimized_model_filepath = str(fresh)
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # a corrupt graph, an operator this ONNX Runtime lacks, ...
            if fresh is not None:
                fresh.unlink(missing_ok=True)
            raise BundleError(f"{path}: ONNX Runtime cannot load it ({first_line(e)})") from None
        finally:
            options.optimized_model_filepath = ""
        if fresh is not None and fresh.is_file():
            os.replace(fresh, cached)  # whole files only, for concurrent starts
        return session

    def _providers(self, device: str, graph: str) -> list:
        """ONNX Runtime's providers for ``graph`` on ``device``. "openvino" puts the encoder on the OpenVINO provider
        (on the CPU, f32 where the graph is not int8, with this instance's threads) and the step graph on the CPU
        provider: its int8 LSTM is an ONNX Runtime operator of its own, and a step is too small to gain."""
        if device == "cuda":
            return [(CUDA, {"device_id": 0}), CPU]
        if device == "openvino" and graph == "encoder":
            threads = self.threads[graph]
            return [(OPENVINO, {"device_type": "CPU", "precision": "FP32",
                                **({"num_of_threads": str(threads)} if threads else {})}), CPU]
        return [CPU]

    def _sessions(self, device: str) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        manifest = self.bundle.manifest
        return (self._session(self.bundle.encoder_path, manifest.encoder.sha256, device, "encoder"),
                self._session(self.bundle.decoder_path, manifest.decoder.sha256, device, "decoder_step"))

    def _open(self, device: str) -> tuple[str, ort.InferenceSession, ort.InferenceSession]:
        chosen = choose_device(device, self._cuda_works)
        return (chosen, *self._sessions(chosen))

    def _cuda_works(self) -> bool:
        """Whether a session of the step graph really gets the CUDA provider (quietly: the provider logs
        its load failures as errors, and capkit says it once)."""
        manifest = self.bundle.manifest
        with silent_ort_logger():
            probe = self._session(self.bundle.decoder_path, manifest.decoder.sha256, "cuda", "decoder_step", cache=False)
        return probe.get_providers()[0] == CUDA

    def _check_names(self) -> None:
        """The manifest must agree with the graphs, a clear error instead of a failing run: the tensor
        names are the graphs' own, the image input is float and the token input int64 (as
        docs/bundle.md says), the logits are as wide as the vocabulary and the image input, where
        its size is static, is ``crop`` x ``crop`` with 3 channels."""
        manifest, folder = self.bundle.manifest, self.bundle.folder
        args = {}
        for session, graph, inputs, outputs in (
                (self._encoder, manifest.encoder, [manifest.encoder.image_input], manifest.encoder.state_outputs),
                (self._decoder, manifest.decoder, [manifest.decoder.token_input, *manifest.decoder.state_inputs],
                 manifest.decoder.outputs)):
            have_in = {i.name: i for i in session.get_inputs()}  # NodeArgs: name, type, shape
            have_out = {o.name: o for o in session.get_outputs()}
            missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
            if missing:
                raise BundleError(f"{folder}: {graph.file} has no tensor named {', '.join(missing)} "
                                  "(the manifest and the graph disagree)")
            args[id(graph), "in"], args[id(graph), "out"] = have_in, have_out

        def static(dim: object) -> bool:
            return isinstance(dim, int) and not isinstance(dim, bool)

        enc, dec = manifest.encoder, manifest.decoder
        for graph, name, expected in ((enc, enc.image_input, "tensor(float)"), (dec, dec.token_input, "tensor(int64)")):
            arg = args[id(graph), "in"][name]
            if arg.type != expected:
                raise BundleError(f"{folder}: {graph.file} input {name!r} is {arg.type}, the bundle format says {expected}")
        image = args[id(enc), "in"][enc.image_input]
        shape = list(image.shape or [])
        if shape and (len(shape) != 4 or static(shape[1]) and shape[1] != 3):
            raise BundleError(f"{folder}: {enc.file} input {enc.image_input!r} has shape {shape}, "
                              "the bundle format says [batch, 3, crop, crop]")
        crop = manifest.preprocess.crop
        if shape and any(static(d) and d != crop for d in shape[2:]):
            raise BundleError(f"{folder}: preprocess.crop is {crop}, but {enc.file} input {enc.image_input!r} takes "
                              f"{shape[2]} x {shape[3]} images; they must agree")
        logits = args[id(dec), "out"][dec.logits_output]
        width = (logits.shape or [None])[-1]
        if static(width) and width != len(manifest.vocab):
            raise BundleError(f"{folder}: vocab has {len(manifest.vocab)} words, but {dec.file} output "
                              f"{dec.logits_output!r} scores {width} tokens; they must agree")

    # -- per-thread state ------------------------------------------------------------------------
    def _thread(self) -> threading.local:
        """The calling thread's mutable state, made on its first call: ``encoder``/``decoder``, the
        two graphs' IO bindings (with IO binding, on every device: the CUDA path binds exactly as the
        CPU one, only the device name differs), and ``greedy``, its :class:`BoundGreedySteps` by batch size.

        Why per thread: an ``IOBinding`` is a mutable list of bound tensors that ``encode`` and each
        step clear and rebind; shared by two threads, one thread's step runs with the other's state
        or tokens (wrong captions) or with a tensor freed under it (a crash). Reusing a binding
        within one thread is safe: ``get_outputs()`` returns OrtValues that share ownership of their
        tensors, so a state the previous call returned stays valid after the binding is cleared and
        rebound, and a caller may hold several (interleaved decodes in one thread; tests check it).
        ``select`` needs nothing here: it builds new OrtValues from host copies."""
        local = self._local
        if self.io_binding and not hasattr(local, "encoder"):
            local.encoder = self._encoder.io_binding()
            local.decoder = self._decoder.io_binding()
        return local

    # -- Inference ------------------------------------------------------------------------------
    def encode(self, images: np.ndarray) -> OrtState:
        images = np.ascontiguousarray(images, dtype=np.float32)  # (B, 3, H, W)
        if not self.io_binding:
            return tuple(self._encoder.run(self._encoder_outputs, {self._image_name: images}))  # each (L, B, H)
        binding = self._thread().encoder
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self._image_name, images)  # copied to the device
        for name in self._encoder_outputs:
            binding.bind_output(name, self._memory, self._device_id)  # allocated on the device by ONNX Runtime
        self._encoder.run_with_iobinding(binding)
        return tuple(binding.get_outputs())  # OrtValues on the device, each (L, B, H)

    def step(self, tokens: np.ndarray, state: OrtState) -> tuple[np.ndarray, OrtState]:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)  # (B,)
        if not self.io_binding:
            feed = dict(zip(self._state_inputs, state))
            feed[self._token_name] = tokens
            logits, *state = self._decoder.run(self._decoder_outputs, feed)  # (B, V)
            return logits, tuple(state)
        binding = self._thread().decoder
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self._token_name, tokens)
        for name, value in zip(self._state_inputs, state):
            binding.bind_ortvalue_input(name, value)  # last step's output, still on the device
        binding.bind_output(self._decoder_outputs[0], "cpu")  # only the logits come to the host
        for name in self._decoder_outputs[1:]:
            binding.bind_output(name, self._memory, self._device_id)
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
        if not self.io_binding and self.device == "cuda":  # host buffers bound to a GPU session read zeros
            tokens = np.ascontiguousarray(tokens, dtype=np.int64)  # (B,)
            chosen, logprobs, *state = self._decoder.run(self._greedy_outputs,
                                                         {self._token_name: tokens, **dict(zip(self._state_inputs, state))})
            return chosen, logprobs, tuple(state)  # (B,), (B,), each (L, B, H)
        if not self.io_binding or self.mask_finished_rows:
            return self._bound_steps(state).run(tokens, state)  # (B,), (B,), each (L, B, H)
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)  # (B,)
        binding = self._thread().decoder
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self._token_name, tokens)
        for name, value in zip(self._state_inputs, state):
            binding.bind_ortvalue_input(name, value)
        for name in self._greedy_outputs[:2]:  # only the (B,) choice comes to the host
            binding.bind_output(name, "cpu")
        for name in self._greedy_outputs[2:]:
            binding.bind_output(name, self._memory, self._device_id)
        self._decoder.run_with_iobinding(binding)
        chosen, logprobs, *state = binding.get_outputs()
        return chosen.numpy(), logprobs.numpy(), tuple(state)

    def _bound_steps(self, state: OrtState) -> BoundGreedySteps:
        """The calling thread's :class:`BoundGreedySteps` for the batch size of ``state``, made on first use."""
        value = state[0]
        batch = int(value.shape()[1] if isinstance(value, ort.OrtValue) else value.shape[1])
        kept: dict[int, BoundGreedySteps] = self._thread().__dict__.setdefault("greedy", {})
        steps = kept.get(batch)
        if steps is None:
            if len(kept) >= MAX_BOUND_BATCHES:
                del kept[next(iter(kept))]
            steps = kept[batch] = BoundGreedySteps(self._decoder, self._token_name, self._state_inputs,
                                                   self._greedy_outputs, state, self._memory, self._device_id,
                                                   ortvalues=self.io_binding)
        return steps

    def select(self, state: OrtState, rows: np.ndarray) -> OrtState:
        rows = np.asarray(rows, dtype=np.int64)  # (B',)
        if not self.io_binding:
            return tuple(np.ascontiguousarray(s[:, rows]) for s in state)  # each (L, B', H)
        # Rare (once per finished row, or per beam step): through the host and back. Thread-safe as it
        # is: new OrtValues, no binding (on the CPU each keeps its numpy copy alive).
        return tuple(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value.numpy()[:, rows]), self._memory,
                                                      self._device_id) for value in state)  # each (L, B', H)

    def __repr__(self) -> str:
        return (f"OnnxInference({str(self.bundle.folder)!r}, device={self.device!r}, io_binding={self.io_binding}, "
                f"threads={self.threads})")


__all__ = ["BoundGreedySteps", "OnnxInference"]
