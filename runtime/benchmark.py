"""Timing for `capkit bench`: numpy, Pillow, ONNX Runtime and the standard library only (no torch).

One *target* is a captioner measured on its own: an ONNX bundle here (:func:`bench_bundle`), or the
PyTorch eager model of a checkpoint through ``capkit.training.benchmark``, which hands its captioner
to the same :func:`bench_captioner`. Every figure is the median and the 90th percentile of
repeated runs after warm-up runs, all greedy (argmax) decoding with a fixed ``max_length``:

- ``encoder``: the image step on one preprocessed image (batch 1), ms;
- ``step``: one decoder step without the loop, batch 1, ms: for a bundle the step graph run as the
  loop runs it (``run_with_iobinding`` on the buffers bound for greedy steps; ``session.run`` of the
  logits where the graph has no greedy outputs; the inference's greedy step with IO binding on);
  for PyTorch the eager greedy step; chained (each step's next token and state feed the next), as
  in a decode. Each sample is the mean step of a chain of ``max_length`` steps, so that it
  compares with ``loop`` (a sum of steps too) median for median: single steps are skewed (a thread
  wake-up now and then), and the median of single steps would leave that tail out of one side only;
- ``loop``: the decode loop of one caption, batch 1, from an encoded state, run back to back as
  the isolated steps are; with ``steps`` (the steps it ran) it gives ``loop_overhead`` = loop /
  (steps x step), what the Python loop adds to the graph's own time;
- ``decode``: the same loop right after the caption's own encoder run, as a caption really runs
  (encoder excluded from the figure): the encoder's weights and activations have pushed the step
  graph's weights out of the CPU caches, so the first steps are slower; ``cold_step``: a chain
  of isolated steps right after an encoder run likewise; ``decode_overhead`` = decode / (steps x
  cold_step);
- ``caption``: end to end per image at batch 1 (image file -> caption: read, preprocess, encode,
  decode), ms; ``preprocess``: the reading and preprocessing alone, ms per image;
- ``throughput``: images per second captioning ``max(batch_sizes)`` image files at each batch size;
  ``encoder_per_image``: the encoder at each batch size, ms per image (what batching saves there);
- ``cold_start`` (optional): wall time of a fresh ``capkit caption IMAGE`` process, started with
  subprocess, and its peak resident memory (``ru_maxrss`` of that child).

:func:`compare` gives the ratios of two targets from the medians reported, so that every ratio can
be checked against the figures next to it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from capkit.runtime.decoding import DecodingOptions, decode
from capkit.runtime.errors import CapkitError
from capkit.runtime.onnx_inference import DEFAULT_SPIN_US
from capkit.runtime.preprocess import ImageSource, preprocess

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2
DEFAULT_MAX_LENGTH = 20
DEFAULT_COLD_RUNS = 3
STEP_CHAINS = 3  # chains of isolated steps per round (each chain max_length steps, one sample)
SYNTHETIC_PHOTO_SIZE = (640, 480)  # a typical photo, so that reading and resizing cost what they do in use


class BenchError(CapkitError):
    """A benchmark that cannot run as asked; one line naming the problem."""


# -- statistics -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    """Median and 90th percentile of ``runs`` samples, in ``unit``."""

    median: float
    p90: float
    runs: int
    unit: str = "ms"

    @classmethod
    def of(cls, samples: Sequence[float], scale: float = 1e3, unit: str = "ms") -> "Stats":
        if not len(samples):
            raise BenchError("no samples to summarise")
        values = np.asarray(samples, dtype=np.float64) * scale
        return cls(float(np.median(values)), float(np.percentile(values, 90)), len(values), unit)

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "p90": self.p90, "runs": self.runs, "unit": self.unit}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stats":
        return cls(float(data["median"]), float(data["p90"]), int(data["runs"]), str(data.get("unit", "ms")))


def measure(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` calls not timed, then ``repeats`` timed ones."""
    if repeats < 1 or warmup < 0:
        raise BenchError(f"repeats must be >= 1 and warm-up >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


class TimedInference:
    """An Inference that passes every call to ``inner`` and records the time of the last ``encode``
    and the number of steps; ``greedy_step`` exists only when ``inner`` has it, so that the decode
    loop takes the same path as without the wrapper (which costs one Python call per step).
    ``encoded``: a state that ``encode`` returns at once instead of running the encoder."""

    def __init__(self, inner: Any, encoded: Any = None):
        self.inner = inner
        self.encoded = encoded
        self.encode_seconds = 0.0
        self.steps = 0
        if hasattr(inner, "greedy_step"):
            self.greedy_step = self._greedy_step

    def encode(self, images: np.ndarray) -> Any:
        started = time.perf_counter()
        state = self.inner.encode(images) if self.encoded is None else self.encoded
        self.encode_seconds = time.perf_counter() - started
        return state

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        self.steps += 1
        return self.inner.step(tokens, state)

    def _greedy_step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        self.steps += 1
        return self.inner.greedy_step(tokens, state)

    def select(self, state: Any, rows: np.ndarray) -> Any:
        return self.inner.select(state, rows)


# -- results -----------------------------------------------------------------------------------------------------------
@dataclass
class ColdStart:
    """Fresh ``capkit caption`` processes: wall time (s) and the largest peak resident memory (MB)."""

    command: list[str]
    wall: Stats  # seconds
    peak_rss_mb: Optional[float]  # None where the platform cannot tell (no os.wait4)
    output: str  # the caption the last run printed, to show it worked

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "wall": self.wall.to_dict(), "peak_rss_mb": self.peak_rss_mb,
                "output": self.output}


@dataclass
class TargetReport:
    """The figures of one target: an ONNX bundle or the PyTorch eager model."""

    name: str  # e.g. "onnx fp32", "onnx int8", "pytorch eager"
    runtime: str  # onnxruntime | pytorch
    precision: str  # fp32 | int8 | fp16
    device: str
    threads: dict[str, Any]
    encoder: Stats  # ms, batch 1
    step: Stats  # ms, batch 1, isolated
    loop: Stats  # ms, batch 1, the decode loop from an encoded state, back to back
    decode: Stats  # ms, batch 1, the decode loop right after the caption's encoder run
    cold_step: Stats  # ms per step of a chain of isolated steps right after an encoder run
    steps: float  # steps per caption in the decode runs (max_length when captions never end)
    caption: Stats  # ms, end to end per image at batch 1
    preprocess: Stats  # ms per image: read the file and preprocess it
    throughput: dict[int, Stats]  # images/s by batch size
    encoder_per_image: dict[int, Stats]  # ms per image of the encoder, by batch size
    source: str = ""  # the bundle folder or checkpoint
    size_bytes: Optional[int] = None  # the bundle's graphs
    cold_start: Optional[ColdStart] = None
    notes: list[str] = field(default_factory=list)

    @property
    def loop_overhead(self) -> float:
        """loop / (steps x isolated step): 1.0 means the Python loop adds nothing to the graph's own time."""
        return self.loop.median / max(self.steps * self.step.median, 1e-12)

    @property
    def decode_overhead(self) -> float:
        """decode / (steps x cold step), both right after an encoder run: the loop's overhead in a caption."""
        return self.decode.median / max(self.steps * self.cold_step.median, 1e-12)

    def batch_speedup(self, batch_size: int) -> Optional[float]:
        """Images/s at ``batch_size`` over images/s at batch 1 (None when either was not measured)."""
        if batch_size not in self.throughput or 1 not in self.throughput:
            return None
        return self.throughput[batch_size].median / self.throughput[1].median

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "runtime": self.runtime, "precision": self.precision, "device": self.device,
            "threads": self.threads, "source": self.source, "size_bytes": self.size_bytes,
            "encoder_ms": self.encoder.to_dict(), "step_ms": self.step.to_dict(), "loop_ms": self.loop.to_dict(),
            "decode_ms": self.decode.to_dict(), "cold_step_ms": self.cold_step.to_dict(), "steps": self.steps,
            "loop_overhead": self.loop_overhead,
            "decode_overhead": self.decode_overhead, "caption_ms": self.caption.to_dict(),
            "preprocess_ms": self.preprocess.to_dict(),
            "throughput": {str(b): s.to_dict() for b, s in sorted(self.throughput.items())},
            "encoder_ms_per_image": {str(b): s.to_dict() for b, s in sorted(self.encoder_per_image.items())},
            "batch_speedup": {str(b): self.batch_speedup(b) for b in sorted(self.throughput) if b != 1
                              and self.batch_speedup(b) is not None},
            "cold_start": self.cold_start.to_dict() if self.cold_start is not None else None,
            "notes": list(self.notes),
        }


def compare(baseline: TargetReport, target: TargetReport) -> dict[str, Any]:
    """How many times better ``target`` is than ``baseline``, from the medians reported (> 1: better).

    Times (encoder, step, decode, caption, cold start) and memory and size: baseline / target.
    Throughput per batch size: target / baseline."""
    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b not in (None, 0) else None

    ratios: dict[str, Any] = {
        "encoder": ratio(baseline.encoder.median, target.encoder.median),
        "step": ratio(baseline.step.median, target.step.median),
        "loop": ratio(baseline.loop.median, target.loop.median),
        "decode": ratio(baseline.decode.median, target.decode.median),
        "caption": ratio(baseline.caption.median, target.caption.median),
        "throughput": {str(b): ratio(target.throughput[b].median, baseline.throughput[b].median)
                       for b in sorted(set(baseline.throughput) & set(target.throughput))},
    }
    if baseline.cold_start is not None and target.cold_start is not None:
        ratios["cold_start"] = ratio(baseline.cold_start.wall.median, target.cold_start.wall.median)
        ratios["peak_rss"] = ratio(baseline.cold_start.peak_rss_mb, target.cold_start.peak_rss_mb)
    if baseline.size_bytes and target.size_bytes:
        ratios["size"] = ratio(float(baseline.size_bytes), float(target.size_bytes))
    return {"baseline": baseline.name, "target": target.name, "ratios": ratios}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load average and package versions (read without importing torch)."""
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
            "load_average": _load_average(), "versions": versions}


def _load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    targets: list[TargetReport]
    load_after: Optional[list[float]] = None

    def comparisons(self) -> list[dict[str, Any]]:
        """Each ONNX target against PyTorch eager; each ONNX int8/fp16 target against the ONNX fp32 one."""
        pytorch = next((t for t in self.targets if t.runtime == "pytorch"), None)
        fp32 = next((t for t in self.targets if t.runtime == "onnxruntime" and t.precision == "fp32"), None)
        out = []
        for target in self.targets:
            if target.runtime != "onnxruntime":
                continue
            if pytorch is not None:
                out.append(compare(pytorch, target))
            if fp32 is not None and target is not fp32:
                out.append(compare(fp32, target))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "load_after": self.load_after,
                "targets": [t.to_dict() for t in self.targets], "comparisons": self.comparisons()}

    def render(self) -> str:
        return render_text(self.to_dict())


# -- the measurements -------------------------------------------------------------------------------------------------
def isolated_step(inference: Any, pixels: np.ndarray, start_id: int) -> Callable[[], Any]:
    """A zero-argument call of one decoder step at the batch of ``pixels``, without the decode loop:
    for ONNX the step graph run as the loop's greedy step runs it (``run_with_iobinding`` on the
    bound buffers of :class:`~capkit.runtime.onnx_inference.BoundGreedySteps`, or ``session.run``
    with the outputs the loop fetches), else the inference's greedy (or plain) step. Calls are
    chained as a decode chains them (each call's next token and state are the next call's inputs,
    from the encoded state and ``<start>``), so that the graph works on fresh data as it does in
    the loop; what the loop adds is the rest."""
    state = inference.encode(pixels)
    tokens = np.full(len(pixels), start_id, dtype=np.int64)
    sessions = getattr(inference, "sessions", None)
    bound = sessions is not None and not getattr(inference, "io_binding", False)
    if bound and inference.has_greedy_outputs:
        steps = inference.bound_greedy_steps(state)
        steps.run(tokens, state)  # the encoded state and <start> into the buffers; binding 1 reads next
        parity = [1]

        def bound_step() -> None:
            steps.session.run_with_iobinding(steps.bindings[parity[0]])
            parity[0] ^= 1

        return bound_step
    if bound:  # a step graph without greedy outputs: the loop fetches the logits with session.run
        decoder = inference.bundle.manifest.decoder
        session, outputs = sessions["decoder_step"], inference.step_outputs(greedy=False)
        token_name, state_names = decoder.token_input, list(decoder.state_inputs)
        feed = {token_name: tokens, **dict(zip(state_names, state))}

        def graph_step() -> None:
            feed.update(zip(state_names, session.run(outputs, feed)[1:]))  # the token stays <start>

        return graph_step
    greedy_step = getattr(inference, "greedy_step", None)
    carried = [tokens, state]

    def inference_step() -> None:
        if greedy_step is not None:
            carried[0], _, carried[1] = greedy_step(*carried)
        else:
            carried[1] = inference.step(*carried)[1]

    return inference_step


def bench_captioner(captioner: Any, images: Sequence[ImageSource], *, name: str, runtime: str, precision: str,
                    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, repeats: int = DEFAULT_REPEATS,
                    warmup: int = DEFAULT_WARMUP, max_length: int = DEFAULT_MAX_LENGTH,
                    progress: Callable[[str], None] = lambda message: None, **extra: Any) -> TargetReport:
    """Measures one captioner (a :class:`~capkit.runtime.captioner.Captioner`, over any Inference).

    ``images``: what ``caption`` reads (files, for an end-to-end figure); the first is also the
    encoder's and the loop's input. ``extra``: TargetReport fields (device, threads, source, size_bytes).

    The batch-1 figures are taken in ``repeats`` rounds, each round timing every one of them once
    (the isolated step as STEP_CHAINS chains), and the batch figures likewise: a burst
    of load from another process then spreads over all figures instead of spoiling one of them."""
    if not images:
        raise BenchError("no images to caption")
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise BenchError(f"batch sizes must be integers >= 1, got {batch_sizes}")
    if repeats < 1 or warmup < 0:
        raise BenchError(f"repeats must be >= 1 and warm-up >= 0, got {repeats} and {warmup}")
    options = DecodingOptions(max_length=max_length)
    inference, vocab = captioner.inference, captioner.vocab
    pixels = preprocess(images[0], captioner.spec)[None]  # (1, 3, H, W)
    step_call = isolated_step(inference, pixels, vocab.start_id)
    cached = TimedInference(inference, encoded=inference.encode(pixels))  # the loop from an encoded state
    fresh = TimedInference(inference)  # the loop right after the caption's own encoder run
    cycle = _cycle(images)
    steps: list[int] = []

    def loop_seconds(timed: TimedInference) -> float:
        timed.steps = 0
        started = time.perf_counter()
        decode(timed, pixels, options, start_id=vocab.start_id, end_id=vocab.end_id)
        elapsed = time.perf_counter() - started - timed.encode_seconds
        steps.append(timed.steps)
        return elapsed

    def chain_seconds() -> float:
        started = time.perf_counter()
        for _ in range(max_length):
            step_call()
        return (time.perf_counter() - started) / max_length

    # One round: the encoder, the loop right after it, a caption, preprocessing; then chains of
    # isolated steps alternating with loops from an encoded state, so that those two (whose ratio
    # is the loop's overhead) run under the same conditions, caches warm with the step graph.
    def cold_chain_seconds() -> float:
        inference.encode(pixels)  # as in a caption: the step graph's weights pushed out of the caches
        return chain_seconds()

    timed_calls: dict[str, Callable[[], Any]] = {
        "encoder": lambda: inference.encode(pixels),
        "decode": lambda: loop_seconds(fresh),
        "cold_step": cold_chain_seconds,
        "caption": lambda: captioner.caption(next(cycle), max_length=max_length),
        "preprocess": lambda: preprocess(next(cycle), captioner.spec),
    }
    samples: dict[str, list[float]] = {key: [] for key in [*timed_calls, "step", "loop"]}
    progress(f"{name}: batch 1 ({repeats} rounds of encoder, decode, caption, preprocess, step and loop)")
    # Whatever runs first after another kind of call is slower (about 20% for int8's decode right
    # after the "encoder" call): the two sides of each overhead ratio take turns at going first.
    orders = [list(timed_calls), list(timed_calls)]
    first, second = orders[1].index("decode"), orders[1].index("cold_step")
    orders[1][first], orders[1][second] = orders[1][second], orders[1][first]
    for index in range(warmup + repeats):
        record = index >= warmup
        for key in orders[index % 2]:
            call = timed_calls[key]
            started = time.perf_counter()
            value = call()
            elapsed = time.perf_counter() - started
            if record:
                samples[key].append(value if key in ("decode", "cold_step") else elapsed)
        for chain in range(STEP_CHAINS):  # the chain and the loop take turns at going first, as above
            if (index * STEP_CHAINS + chain) % 2:
                loop_time, step_time = loop_seconds(cached), chain_seconds()
            else:
                step_time, loop_time = chain_seconds(), loop_seconds(cached)
            if record:
                samples["step"].append(step_time)
                samples["loop"].append(loop_time)
        if not record:
            steps.clear()

    count = max(batch_sizes)
    chunk = [images[i % len(images)] for i in range(count)]
    runs = max(1, min(repeats, 3))  # whole passes over `count` images: a few suffice
    rates: dict[int, list[float]] = {b: [] for b in batch_sizes}
    encoder_rows: dict[int, list[float]] = {b: [] for b in batch_sizes}
    batches = {b: np.repeat(pixels, b, axis=0) for b in batch_sizes}  # (B, 3, H, W)
    progress(f"{name}: batches {batch_sizes} ({runs} rounds of {count} images each)")
    for index in range(1 + runs):
        for batch_size in batch_sizes:
            started = time.perf_counter()
            captioner.caption_batch(chunk, max_length=max_length, batch_size=batch_size)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            inference.encode(batches[batch_size])
            encoder_seconds = time.perf_counter() - started
            if index:
                rates[batch_size].append(count / seconds)
                encoder_rows[batch_size].append(encoder_seconds / batch_size)

    return TargetReport(
        name=name, runtime=runtime, precision=precision, encoder=Stats.of(samples["encoder"]),
        step=Stats.of(samples["step"]), loop=Stats.of(samples["loop"]), decode=Stats.of(samples["decode"]),
        cold_step=Stats.of(samples["cold_step"]),
        steps=float(np.mean(steps)), caption=Stats.of(samples["caption"]), preprocess=Stats.of(samples["preprocess"]),
        throughput={b: Stats.of(r, scale=1.0, unit="images/s") for b, r in rates.items()},
        encoder_per_image={b: Stats.of(r) for b, r in encoder_rows.items()},
        device=str(extra.pop("device", getattr(captioner, "device", "cpu"))), threads=extra.pop("threads", {}), **extra)


def _cycle(items: Sequence[Any]) -> Iterator[Any]:
    while True:
        yield from items


def bench_bundle(bundle: Union[str, os.PathLike], images: Sequence[ImageSource], *, device: str = "cpu",
                 threads: Optional[int] = None, step_threads: Optional[int] = None,
                 spin_us: Optional[int] = DEFAULT_SPIN_US,
                 name: Optional[str] = None, cold_runs: int = 0, cold_image: Optional[str] = None,
                 **options: Any) -> TargetReport:
    """:func:`bench_captioner` for an ONNX bundle, plus ``cold_runs`` fresh ``capkit caption`` processes.
    ``spin_us``: as OnnxInference's (None: ONNX Runtime's own)."""
    from capkit.runtime.bundle import load_bundle
    from capkit.runtime.captioner import Captioner
    from capkit.runtime.onnx_inference import OnnxInference

    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    inference = OnnxInference(loaded, device=device, threads=threads, step_threads=step_threads, spin_us=spin_us)
    captioner = Captioner.from_inference(inference, manifest.vocab, manifest.preprocess, manifest.max_length, loaded)
    report = bench_captioner(captioner, images, name=name or f"onnx {manifest.precision}", runtime="onnxruntime",
                             precision=manifest.precision, device=inference.device, source=str(loaded.folder),
                             threads={**inference.threads, "spin_us": inference.spin_us},
                             size_bytes=bundle_bytes(loaded), **options)
    if not inference.has_greedy_outputs:
        report.notes.append("the step graph has no next_token output (an older bundle): greedy steps copy the logits")
    if cold_runs:
        args = ["--model", str(loaded.folder), "--device", device]
        if threads is not None:
            args += ["--threads", str(threads)]
        report.cold_start = cold_start(caption_command(cold_image or str(images[0]), args), cold_runs)
    return report


def bundle_bytes(bundle: Any) -> int:
    """Bytes of a bundle's two graphs and of their external data files, if any."""
    paths = [bundle.encoder_path, bundle.decoder_path]
    paths += [p.with_name(p.name + ".data") for p in paths]
    return sum(p.stat().st_size for p in paths if p.is_file())


# -- cold start -------------------------------------------------------------------------------------------------------
def capkit_executable() -> list[str]:
    """The ``capkit`` console script next to this interpreter, else ``python -m capkit``."""
    script = Path(sys.executable).with_name("capkit")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "capkit"]


def caption_command(image: str, args: Sequence[str] = ()) -> list[str]:
    return [*capkit_executable(), "caption", str(image), *args]


# The launcher: a bare interpreter (-S -I: no site, no user paths) that starts the measured process,
# waits for it with os.wait4 and writes its wall time, exit status and ru_maxrss to a file. Linux
# counts in a child's ru_maxrss the memory of the process it was forked from (the high-water mark
# of the parent's address space is carried through fork/vfork and exec), so a child forked from the
# bench itself (torch loaded: ~1 GB) would report at least that much. Forked from the launcher, it
# carries only the launcher's ~10 MB.
_LAUNCHER = """
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
    launcher's own ~10 MB; see ``_LAUNCHER``); elsewhere only the wall time is measured."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory(prefix="capkit-bench-") as tmp:
        if not hasattr(os, "wait4"):  # pragma: no cover - Windows
            started = time.perf_counter()
            proc = subprocess.run(list(command), stdout=out, stderr=err, env=env, timeout=timeout)
            wall, peak, status = time.perf_counter() - started, None, proc.returncode
        else:
            report = Path(tmp, "report.json")
            launcher = [sys.executable, "-S", "-I", "-c", _LAUNCHER, json.dumps(list(command)), str(report),
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


# -- images -----------------------------------------------------------------------------------------------------------
def synthetic_photos(folder: Union[str, os.PathLike], count: int = 8, size: tuple[int, int] = SYNTHETIC_PHOTO_SIZE,
                     seed: int = 0) -> list[str]:
    """``count`` photo-sized JPEG files (gradients, shapes and noise) in ``folder``; their paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    paths = []
    for i in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = rng.integers(0, 256, 3)
        pixels = (base + 80 * np.sin(x[..., None] / rng.uniform(20, 90) + rng.uniform(0, 6, 3))
                  + 60 * np.cos(y[..., None] / rng.uniform(20, 90)))
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        pixels[top:top + height // 3, left:left + width // 3] = rng.integers(0, 256, 3)
        pixels += rng.normal(0, 8, pixels.shape)
        path = folder / f"photo-{i:02d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def image_paths(arguments: Sequence[str]) -> list[str]:
    """Image files from files and folders (the images directly inside a folder, sorted)."""
    from PIL import Image

    Image.init()
    extensions = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    paths: list[str] = []
    for argument in arguments:
        if os.path.isdir(argument):
            paths += sorted(str(p) for p in Path(argument).iterdir()
                            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions)
        elif os.path.isfile(argument):
            paths.append(argument)
        else:
            raise BenchError(f"{argument}: no such file or folder")
    if not paths:
        raise BenchError(f"no images in {', '.join(arguments)}")
    return paths


class ImageSet:
    """The benchmark's images: the given files, or synthetic photos in a temporary folder (removed on close)."""

    def __init__(self, arguments: Sequence[str] = (), count: int = 8):
        self._tmp: Optional[str] = None
        if arguments:
            self.paths = image_paths(arguments)
            self.synthetic = False
        else:
            self._tmp = tempfile.mkdtemp(prefix="capkit-bench-")
            self.paths = synthetic_photos(self._tmp, count)
            self.synthetic = True

    def describe(self) -> str:
        if self.synthetic:
            return f"{len(self.paths)} synthetic {SYNTHETIC_PHOTO_SIZE[0]}x{SYNTHETIC_PHOTO_SIZE[1]} JPEG photos"
        return f"{len(self.paths)} image files"

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "ImageSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- rendering --------------------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _stat(stats: Optional[dict[str, Any]], digits: int = 2) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.{digits}f} ({stats['p90']:.{digits}f})"


def target_rows(report: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    """The per-target tables (median (p90)) from :meth:`BenchReport.to_dict`: batch-1 latency, batches,
    start and size; each as (header, rows)."""
    targets = report["targets"]
    batch_sizes = sorted({int(b) for t in targets for b in t["throughput"]})
    latency = (["target", "encoder ms", "step ms", "loop ms (steps)", "loop / (steps x step)", "step ms after encoder",
                "decode ms after encoder", "decode / (steps x step after encoder)", "preprocess ms", "caption ms"],
               [[t["name"], _stat(t["encoder_ms"]), _stat(t["step_ms"], 3), f"{_stat(t['loop_ms'])} ({t['steps']:g})",
                 _fmt(t["loop_overhead"], 3, "x"), _stat(t["cold_step_ms"], 3), _stat(t["decode_ms"]),
                 _fmt(t["decode_overhead"], 3, "x"), _stat(t["preprocess_ms"]), _stat(t["caption_ms"])]
                for t in targets])
    batches = (["target", *[f"img/s b{b}" for b in batch_sizes], *[f"b{b}/b1" for b in batch_sizes if b != 1],
                *[f"encoder ms/img b{b}" for b in batch_sizes]],
               [[t["name"], *[_stat(t["throughput"].get(str(b)), 1) for b in batch_sizes],
                 *[_fmt(t["batch_speedup"].get(str(b)), 2, "x") for b in batch_sizes if b != 1],
                 *[_stat(t["encoder_ms_per_image"].get(str(b))) for b in batch_sizes]] for t in targets])
    start = (["target", "cold start s", "peak RSS MB", "size MB"],
             [[t["name"], _stat((t.get("cold_start") or {}).get("wall")),
               _fmt((t.get("cold_start") or {}).get("peak_rss_mb"), 0),
               _fmt(t["size_bytes"] / 1e6, 1) if t.get("size_bytes") else "-"] for t in targets])
    return [latency, batches, start]


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    batch_sizes = sorted({int(b) for c in report["comparisons"] for b in c["ratios"]["throughput"]})
    header = ["target vs baseline", "encoder", "step", "loop", "decode", "caption (b1)",
              *[f"img/s b{b}" for b in batch_sizes],
              "cold start", "peak RSS", "size"]
    rows = []
    for c in report["comparisons"]:
        r = c["ratios"]
        rows.append([f"{c['target']} vs {c['baseline']}", *[_fmt(r.get(k), 2, "x") for k in
                                                              ("encoder", "step", "loop", "decode", "caption")],
                     *[_fmt(r["throughput"].get(str(b)), 2, "x") for b in batch_sizes],
                     *[_fmt(r.get(k), 2, "x") for k in ("cold_start", "peak_rss", "size")]])
    return header, rows


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
               ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]


def render_text(report: dict[str, Any], markdown: bool = False) -> str:
    """The report as text tables (or markdown): figures as median (p90), then the ratios."""
    machine = report["machine"]
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores; load average {machine.get('load_average')} "
             f"before, {report.get('load_after')} after; figures are median (p90)",
             "versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
             "settings: " + json.dumps(report["settings"], sort_keys=True), ""]
    for header, rows in target_rows(report):
        lines += _table(header, rows, markdown) + [""]
    lines.pop()
    if report["comparisons"]:
        lines += ["", "ratios (> 1: the target is better; times and sizes baseline/target, img/s target/baseline)"]
        lines += _table(*comparison_rows(report), markdown)
    notes = [f"{t['name']}: {n}" for t in report["targets"] for n in t.get("notes", [])]
    if notes:
        lines += [""] + [f"note: {n}" for n in notes]
    return "\n".join(lines)


__all__ = ["BenchError", "BenchReport", "ColdStart", "ImageSet", "Stats", "TargetReport", "TimedInference",
           "bench_bundle", "bench_captioner", "bundle_bytes", "caption_command", "cold_start", "compare", "image_paths",
           "isolated_step", "machine_info", "measure", "render_text", "run_child", "synthetic_photos"]
