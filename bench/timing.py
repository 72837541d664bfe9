"""The measurement of one captioner: :func:`bench_captioner` over a :class:`CaptionerTimer`.

A captioner is a :class:`~capkit.runtime.captioner.Captioner` over any Inference (ONNX Runtime, or
the PyTorch eager model); only the Inference's public calls are used (``encode``, ``step``,
``greedy_step`` where it has one, ``select``), through the runtime's own decode loop, so that both
sides of every comparison run the same code around their graphs. All decoding is greedy with a
fixed ``max_length``. numpy and the runtime only: nothing here imports torch or ONNX Runtime.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from capkit.bench.report import TargetReport
from capkit.bench.stats import BenchError, Stats, check_rounds
from capkit.runtime.decoding import DecodingOptions, decode
from capkit.runtime.errors import Status
from capkit.runtime.image_files import ImageSource
from capkit.runtime.preprocess import preprocess

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2
DEFAULT_MAX_LENGTH = 20
STEP_CHAINS = 3  # chains of isolated steps per round (each chain max_length steps, one sample)
BATCH_ROUNDS = 3  # at most this many timed passes over max(batch_sizes) images per batch size: a few suffice


class TimedInference:
    """An Inference that passes every call to ``inner`` and records the time of the last ``encode``,
    the number of steps and of ``select`` calls; ``greedy_step`` exists only when ``inner`` has it, so that the decode
    loop takes the same path as without the wrapper (which costs one Python call per step).
    ``encoded``: a state that ``encode`` returns at once instead of running the encoder."""

    def __init__(self, inner: Any, encoded: Any = None):
        self.inner = inner
        self.encoded = encoded
        self.encode_seconds = 0.0
        self.steps = 0
        self.selects = 0  # select calls: rows dropped (or beams reordered) through the inference
        self.mask_finished_rows = getattr(inner, "mask_finished_rows", False)  # the loop reads it: the same path
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
        self.selects += 1
        return self.inner.select(state, rows)


class IsolatedStep:
    """One decoder step at the batch of ``pixels`` without the decode loop: the inference's greedy
    step, chained, as the loop calls it (``step`` where the inference has no ``greedy_step``).

    Each call feeds the previous call's outputs (next token and state) to the next one, starting
    from the encoded state and ``<start>``, so that the step works on fresh data as it does in the
    loop, and on the objects the loop would pass (an inference that reuses its output buffers, as
    ONNX Runtime's on the CPU does, takes its no-copy path). What the loop adds is the rest: the
    choice of rows that go on, the tokens kept, the end test. Between chains the decode loop may
    run on the same inference and overwrite reused buffers; the chain goes on from whatever they
    hold, a step's time not depending on the values of its state. With ``step`` alone, the token
    stays ``<start>`` (nothing chooses the next one without the loop)."""

    def __init__(self, inference: Any, pixels: np.ndarray, start_id: int):
        self.inference = inference
        self.state = inference.encode(pixels)
        self.tokens = np.full(len(pixels), start_id, dtype=np.int64)  # (B,)
        greedy = getattr(inference, "greedy_step", None)
        self._greedy_step: Optional[Callable[..., Any]] = greedy
        self.run = self._run_greedy if greedy is not None else self._run_step

    def _run_greedy(self) -> None:
        self.tokens, _, self.state = self._greedy_step(self.tokens, self.state)

    def _run_step(self) -> None:
        self.state = self.inference.step(self.tokens, self.state)[1]

    def __call__(self) -> None:
        self.run()


class CaptionerTimer:
    """The timed calls of :func:`bench_captioner` on one captioner, each a named method.

    ``images``: what :meth:`caption` and :meth:`preprocess` read, in turn; the first, preprocessed,
    is the input of the encoder, of the steps and of the loop (batch 1). :meth:`decode` and
    :meth:`loop` count the steps they ran into :attr:`steps`. ``phone_images``: phone-size photos
    that :meth:`phone_caption` and :meth:`phone_preprocess` read, in turn; with them each round
    also runs PHONE_ROUND (:attr:`round`)."""

    ROUND = ("encoder", "decode", "cold_step", "caption", "preprocess")  # one round's calls, in order
    PHONE_ROUND = ("phone_caption", "phone_preprocess")  # after ROUND, with phone_images
    SELF_TIMED = frozenset({"decode", "cold_step"})  # calls that return their own figure, seconds

    def __init__(self, captioner: Any, images: Sequence[ImageSource], max_length: int,
                 phone_images: Sequence[ImageSource] = ()):
        self.captioner = captioner
        self.inference, self.vocab, self.spec = captioner.inference, captioner.vocab, captioner.spec
        self.max_length = max_length
        self.options = DecodingOptions(max_length=max_length)
        self.images = images
        self.pixels = preprocess(images[0], self.spec)[None]  # (1, 3, H, W)
        self.isolated = IsolatedStep(self.inference, self.pixels, self.vocab.start_id)
        self.cached = TimedInference(self.inference, encoded=self.inference.encode(self.pixels))  # the loop from an encoded state
        self.fresh = TimedInference(self.inference)  # the loop right after the caption's own encoder run
        self._next_image = itertools.cycle(images).__next__
        self.phone_images = list(phone_images)
        self._next_phone = itertools.cycle(self.phone_images).__next__
        self.round = self.ROUND + (self.PHONE_ROUND if self.phone_images else ())
        self.steps: list[int] = []  # steps run by each decode and loop call

    # -- the timed calls ----------------------------------------------------------------------------------------------
    def encoder(self) -> Any:
        """The encoder on the first image (the caller times it)."""
        return self.inference.encode(self.pixels)

    def decode(self) -> float:
        """Seconds of the decode loop right after the caption's own encoder run, the encoder excluded:
        as a caption runs, with the step's weights pushed out of the caches by the encoder's."""
        return self._loop_seconds(self.fresh)

    def cold_step(self) -> float:
        """Seconds per step of a chain of isolated steps right after an encoder run, as in a caption."""
        self.inference.encode(self.pixels)
        return self.step_chain()

    def caption(self) -> Any:
        """One image file to its caption, end to end (the caller times it)."""
        return self.captioner.caption(self._next_image(), max_length=self.max_length)

    def preprocess(self) -> Any:
        """Reading and preprocessing one image file (the caller times it)."""
        return preprocess(self._next_image(), self.spec)

    def phone_caption(self) -> Any:
        """One phone-size photo to its caption, end to end (the caller times it)."""
        return self.captioner.caption(self._next_phone(), max_length=self.max_length)

    def phone_preprocess(self) -> Any:
        """Reading and preprocessing one phone-size photo (the caller times it)."""
        return preprocess(self._next_phone(), self.spec)

    def step_chain(self) -> float:
        """Seconds per step of a chain of ``max_length`` isolated steps: a mean over a chain, so that
        it compares with :meth:`loop` (a sum of steps too) median for median. The median of single
        steps would leave out the rare slow step (a thread wake-up now and then) that the loop's
        figure includes."""
        run = self.isolated.run
        started = time.perf_counter()
        for _ in range(self.max_length):
            run()
        return (time.perf_counter() - started) / self.max_length

    def loop(self) -> float:
        """Seconds of the decode loop from an encoded state (the encoder not run), back to back with the steps."""
        return self._loop_seconds(self.cached)

    def _loop_seconds(self, timed: TimedInference) -> float:
        timed.steps = 0
        started = time.perf_counter()
        decode(timed, self.pixels, self.options, self.vocab)
        elapsed = time.perf_counter() - started - timed.encode_seconds
        self.steps.append(timed.steps)
        return elapsed

    # -- the procedure ----------------------------------------------------------------------------------------------
    def round_orders(self) -> list[list[str]]:
        """The order of one round's calls, even rounds then odd ones. Whatever runs first after
        another kind of call is slower (its weights and buffers are no longer in the caches), so the
        two sides of the decode overhead ratio (decode, cold_step) take turns at going first."""
        even, odd = list(self.round), list(self.round)
        first, second = odd.index("decode"), odd.index("cold_step")
        odd[first], odd[second] = odd[second], odd[first]
        return [even, odd]

    def batch_one(self, repeats: int, warmup: int) -> dict[str, list[float]]:
        """Seconds of each batch-1 figure: ``warmup`` rounds not recorded, then ``repeats`` rounds.

        One round: the calls of :attr:`ROUND` (in :meth:`round_orders`), then STEP_CHAINS pairs of
        a step chain and a loop from an encoded state, which take turns at going first, so that the
        two sides of the loop overhead ratio run under the same conditions, caches warm with the
        step's weights. The steps counted in warm-up rounds are dropped."""
        samples: dict[str, list[float]] = {key: [] for key in [*self.round, "step", "loop"]}
        orders = self.round_orders()
        for index in range(warmup + repeats):
            record = index >= warmup
            for key in orders[index % 2]:
                call = getattr(self, key)
                started = time.perf_counter()
                value = call()
                elapsed = time.perf_counter() - started
                if record:
                    samples[key].append(value if key in self.SELF_TIMED else elapsed)
            for chain in range(STEP_CHAINS):
                if (index * STEP_CHAINS + chain) % 2:
                    loop_time, step_time = self.loop(), self.step_chain()
                else:
                    step_time, loop_time = self.step_chain(), self.loop()
                if record:
                    samples["step"].append(step_time)
                    samples["loop"].append(loop_time)
            if not record:
                self.steps.clear()
        return samples

    def batches(self, batch_sizes: Sequence[int], runs: int) -> dict[str, dict[int, list[float]]]:
        """At each batch size: "files", images/s captioning ``max(batch_sizes)`` image files (read and
        preprocessed in the captioning thread, as ``caption_batch`` does); "model", images/s of the
        encoder and the decode loop on preprocessed images (what a bulk run's reader threads leave to
        the model); "encoder", encoder seconds per image. One pass not recorded, then ``runs`` passes,
        every batch size in each pass."""
        count = max(batch_sizes)
        chunk = [self.images[i % len(self.images)] for i in range(count)]
        figures: dict[str, dict[int, list[float]]] = {key: {b: [] for b in batch_sizes}
                                                      for key in ("files", "model", "encoder")}
        batches = {b: np.repeat(self.pixels, b, axis=0) for b in batch_sizes}  # (B, 3, H, W)
        for index in range(1 + runs):
            for batch_size in batch_sizes:
                started = time.perf_counter()
                self.captioner.caption_batch(chunk, max_length=self.max_length, batch_size=batch_size)
                seconds = time.perf_counter() - started
                started = time.perf_counter()
                decode(self.inference, batches[batch_size], self.options, self.vocab)
                model_seconds = time.perf_counter() - started
                started = time.perf_counter()
                self.inference.encode(batches[batch_size])
                encoder_seconds = time.perf_counter() - started
                if index:
                    figures["files"][batch_size].append(count / seconds)
                    figures["model"][batch_size].append(batch_size / model_seconds)
                    figures["encoder"][batch_size].append(encoder_seconds / batch_size)
        return figures


def bench_captioner(captioner: Any, images: Sequence[ImageSource], *, name: str, runtime: str, precision: str,
                    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, repeats: int = DEFAULT_REPEATS,
                    warmup: int = DEFAULT_WARMUP, max_length: int = DEFAULT_MAX_LENGTH,
                    status: Status = lambda message: None,
                    phone_images: Sequence[ImageSource] = (), **extra: Any) -> TargetReport:
    """Measures one captioner (a :class:`~capkit.runtime.captioner.Captioner`, over any Inference).

    ``images``: what ``caption`` reads (files, for an end-to-end figure); the first is also the
    encoder's and the loop's input. ``phone_images``: phone-size photos, captioned and preprocessed
    apart (``phone_caption``, ``phone_preprocess``). ``extra``: TargetReport fields (device,
    threads, source, size_bytes).

    The batch-1 figures are taken in ``repeats`` rounds, each round timing every one of them once
    (the isolated step as STEP_CHAINS chains), and the batch figures likewise: a burst
    of load from another process then spreads over all figures instead of spoiling one of them."""
    if not images:
        raise BenchError("no images to caption")
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise BenchError(f"batch sizes must be integers >= 1, got {batch_sizes}")
    check_rounds(repeats, warmup)
    timer = CaptionerTimer(captioner, images, max_length, phone_images)
    phones = ", phone photo caption and preprocess" if timer.phone_images else ""
    status(f"{name}: batch 1 ({repeats} rounds of encoder, decode, caption, preprocess{phones}, step and loop)")
    samples = timer.batch_one(repeats, warmup)
    runs = max(1, min(repeats, BATCH_ROUNDS))
    status(f"{name}: batches {batch_sizes} ({runs} rounds of {max(batch_sizes)} images each)")
    figures = timer.batches(batch_sizes, runs)
    return TargetReport(
        name=name, runtime=runtime, precision=precision, encoder=Stats.of(samples["encoder"]),
        step=Stats.of(samples["step"]), loop=Stats.of(samples["loop"]), decode=Stats.of(samples["decode"]),
        cold_step=Stats.of(samples["cold_step"]), steps=float(np.mean(timer.steps)),
        caption=Stats.of(samples["caption"]), preprocess=Stats.of(samples["preprocess"]),
        throughput={b: Stats.of(r, scale=1.0, unit="images/s") for b, r in figures["files"].items()},
        model_throughput={b: Stats.of(r, scale=1.0, unit="images/s") for b, r in figures["model"].items()},
        encoder_per_image={b: Stats.of(r) for b, r in figures["encoder"].items()},
        phone_caption=Stats.of(samples["phone_caption"]) if timer.phone_images else None,
        phone_preprocess=Stats.of(samples["phone_preprocess"]) if timer.phone_images else None,
        device=str(extra.pop("device", getattr(captioner, "device", "cpu"))), threads=extra.pop("threads", {}), **extra)


__all__ = ["BATCH_ROUNDS", "CaptionerTimer", "DEFAULT_BATCH_SIZES", "DEFAULT_MAX_LENGTH", "DEFAULT_REPEATS",
           "DEFAULT_WARMUP", "IsolatedStep", "STEP_CHAINS", "TimedInference", "bench_captioner"]
