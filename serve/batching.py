"""Batching across requests, through the runtime's one decode loop (:func:`capkit.runtime.decoding.decode`).

Each request's images are captioned by ``Captioner.caption_pixels`` in a thread of its own, as in any app, but
over a :class:`SharedInference`: its ``encode``, ``step`` and ``greedy_step`` do not run a graph, they hand the
call to the :class:`BatchEngine`'s scheduler thread and wait. The scheduler runs the calls of every request
waiting at that moment as one batch (their rows concatenated, each request's slice of the answer handed back)
and runs the next batch as soon as every request in the loop has made its next call. So a request joins the
running batch between two decoding steps and leaves it when its own decode loop ends ("step" batching: a short
caption never waits for a long one), while the decode loop, the decoders, seeded sampling (each image's own
generator) and the error handling of the Captioner stay the runtime's: a caption is what ``capkit caption``
gives for the same image and options, with the logprob equal to within the float rounding that batching
changes (as between ``caption_batch`` and ``caption``).

Policies (``mode``): "step" as above; "request": requests that arrived while a batch ran wait until it has
finished, then start together (a dynamic batcher), decoded by one decode loop in the scheduler's thread (jobs with
the same options as one batch, as ``Captioner.caption_batch`` does; its methods are in
:mod:`capkit.serve.request_batching`); "none": one request at a time. An idle engine waits up to
``max_wait`` seconds for more requests while ``incoming()`` says some are on their way (being read or
preprocessed), never when none is: at concurrency 1 a request waits for nothing. Nor does it change threads: a
request that finds the engine idle is decoded in the thread that preprocessed it (:meth:`BatchEngine.caption_now`,
mode "request"), and a job alone in the engine (mode "step": no other in the batch or waiting) runs its calls in
its own thread, so that it does not pay two thread hand-overs a step; the next job to arrive goes through the
scheduler, and the two share the steps from then on.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from capkit.runtime.captioner import Caption, Captioner
from capkit.runtime.decoding import DecodingOptions
from capkit.serve.request_batching import RequestBatching, _Reporting

STRAGGLER_S = 0.002  # a batch waits this long at most for a request in the loop that has not made its next call
KINDS = ("encode", "step", "greedy_step")


class Cancelled(BaseException):
    """Raised inside a job's decode loop when its request has timed out: a BaseException, so that the Captioner's
    error handling (which splits a failing batch and retries its halves) lets it through."""


@dataclass(eq=False)
class Job:
    """One request's rows on their way through the engine."""

    pixels: np.ndarray  # float32 (B, 3, crop, crop)
    labels: list[Optional[str]]
    options: DecodingOptions
    future: Future = field(default_factory=Future)  # list[Caption], or the exception
    cancelled: bool = False
    in_loop: bool = False  # its first encode has run: it is part of the running batch until it leaves
    direct: bool = False  # running a call in its own thread (it was alone in the engine when it made the call)
    call: Optional[tuple[str, tuple]] = None  # the pending call (kind, args), made by the job's thread
    answer: Any = None
    error: Optional[BaseException] = None
    answered: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    started: Optional[float] = None  # when its first encode ran

    @property
    def rows(self) -> int:
        return len(self.pixels) * self.options.beam


class SharedInference:
    """The Inference a job's decode loop sees; every graph call goes through the engine's scheduler. ``select``
    (dropping finished rows, reordering beams) is the job's own business and runs in its thread."""

    def __init__(self, engine: "BatchEngine") -> None:
        self._engine = engine
        self.device = getattr(engine.base, "device", "cpu")
        if hasattr(engine.base, "greedy_step"):  # the decode loop takes the graph's greedy choice when there is one
            self.greedy_step = lambda tokens, state: engine.call("greedy_step", tokens, state)

    def encode(self, images: np.ndarray) -> Any:
        return self._engine.call("encode", images)

    def step(self, tokens: np.ndarray, state: Any) -> Any:
        return self._engine.call("step", tokens, state)

    def select(self, state: Any, rows: np.ndarray) -> Any:
        return self._engine.base.select(state, rows)


def _merge(kind: str, calls: list[tuple]) -> tuple:
    """The calls' arguments as one call's: images or tokens concatenated (B,...), states along their batch axis
    (each state array is (layers, B, hidden))."""
    first = np.concatenate([c[0] for c in calls])
    if kind == "encode":
        return (first,)
    states = zip(*(c[1] for c in calls))
    return first, tuple(np.concatenate(parts, axis=1) for parts in states)


def _split(kind: str, answer: Any, sizes: list[int]) -> list[Any]:
    """One batched answer cut back into each call's own, as copies: the ONNX Runtime inference may hand out
    buffers that a later step overwrites (BoundGreedySteps)."""
    bounds = np.cumsum([0, *sizes])
    pieces = list(zip(bounds[:-1], bounds[1:]))
    if kind == "encode":
        return [tuple(np.array(s[:, a:b]) for s in answer) for a, b in pieces]
    *heads, state = answer  # step: logits, state; greedy_step: chosen, logprobs, state
    return [(*(np.array(h[a:b]) for h in heads), tuple(np.array(s[:, a:b]) for s in state)) for a, b in pieces]


class BatchEngine(RequestBatching):
    """Captions jobs (:meth:`submit`) with ``captioner``'s model, batched across jobs as the module says.

    ``captioner``: a Captioner whose inference keeps its state as numpy arrays (the ONNX Runtime inference without
    IO binding). ``max_batch``: rows (images, or beams) decoded together; a job larger than that runs alone.
    ``on_batch(kind, rows, seconds)``: called after each graph run (metrics). ``max_jobs``: job threads."""

    def __init__(self, captioner: Captioner, *, mode: str = "step", max_batch: int = 32, max_wait: float = 0.005,
                 incoming: Callable[[], int] = lambda: 0, on_batch: Optional[Callable[[str, int, float], None]] = None,
                 max_jobs: int = 64) -> None:
        self.base = captioner.inference
        self.mode, self.max_batch, self.max_wait, self.incoming = mode, max_batch, max_wait, incoming
        self.on_batch = on_batch or (lambda kind, rows, seconds: None)
        self.captioner = Captioner.from_inference(SharedInference(self), captioner.vocab, captioner.spec,
                                                  captioner.max_length, captioner.bundle, limits=captioner.limits,
                                                  fast_decode=captioner.fast_decode)
        self._cond = threading.Condition()
        self._new: list[Job] = []  # jobs whose first encode waits to be let in, in arrival order
        self._loop: list[Job] = []  # jobs in the running batch
        self._local = threading.local()  # the job of a job thread
        self._stopping = False
        self._decoding = 0  # mode "request": batches being decoded (by the scheduler, or by caption_now's caller)
        # Mode "request": the runtime's decode loop over the graphs, each run reported (on_batch)
        self._requests = Captioner.from_inference(_Reporting(self.base, self._report), captioner.vocab, captioner.spec,
                                                  captioner.max_length, captioner.bundle, limits=captioner.limits,
                                                  fast_decode=captioner.fast_decode)
        self._pool = ThreadPoolExecutor(max_workers=max_jobs, thread_name_prefix="capkit-job")
        target = self._schedule_requests if mode == "request" else self._schedule
        self._scheduler = threading.Thread(target=target, name="capkit-batcher", daemon=True)
        self._scheduler.start()

    # -- the jobs' side ----------------------------------------------------------------------------------------
    def submit(self, pixels: np.ndarray, labels: list[Optional[str]], options: DecodingOptions) -> Job:
        """Starts captioning ``pixels`` (float32 (B, 3, crop, crop), preprocessed); ``job.future`` gives one Caption
        per row, in order. ``options``: checked (``Captioner.options``)."""
        job = Job(pixels, list(labels), options)
        if self.mode == "request":  # decoded by the scheduler itself, with the jobs waiting beside it
            with self._cond:
                self._new.append(job)
                self._cond.notify_all()
        else:
            self._pool.submit(self._run, job)
        return job

    def cancel(self, job: Job) -> None:
        """Stops ``job`` at its next graph call (its future then fails with Cancelled)."""
        with self._cond:
            job.cancelled = True
            self._cond.notify_all()

    def poke(self) -> None:
        """Wakes the scheduler: ``incoming()`` has changed."""
        with self._cond:
            self._cond.notify_all()

    def _run(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        self._local.job = job
        try:
            if job.cancelled:
                raise Cancelled()
            result: list[Caption] = self.captioner.caption_pixels(job.pixels, job.labels, job.options)
        except BaseException as e:  # Cancelled, or a bug: the request's answer, never a lost thread
            job.future.set_exception(e)
        else:
            job.future.set_result(result)
        finally:
            with self._cond:
                if job in self._loop:
                    self._loop.remove(job)
                if job in self._new:
                    self._new.remove(job)
                self._cond.notify_all()

    def call(self, kind: str, *args: Any) -> Any:
        """A graph call from a job's decode loop: waits for the scheduler to run it (with others'), or, when the job
        is alone in the engine, runs it in the job's own thread (no hand-over to the scheduler and back)."""
        job: Job = self._local.job
        job.answered.clear()
        with self._cond:
            alone = self._alone(job)
            if alone:
                if not job.in_loop:  # its first call: it is the batch now, and later jobs see it there
                    job.in_loop, job.started = True, time.perf_counter()
                    self._loop.append(job)
                job.direct = True
            else:
                job.call = (kind, args)
                if not job.in_loop:
                    self._new.append(job)
            self._cond.notify_all()
        if alone:
            try:
                return self._run_direct(kind, args)
            finally:
                with self._cond:
                    job.direct = False
                    self._cond.notify_all()
        job.answered.wait()
        if job.error is not None:
            error, job.error = job.error, None
            raise error
        answer, job.answer = job.answer, None
        return answer

    def _alone(self, job: Job) -> bool:
        """(Under the condition.) Whether ``job`` may run its call itself: no other job is waiting or in the batch."""
        if job.cancelled:
            raise Cancelled()
        return not self._new and all(other is job for other in self._loop)

    def _run_direct(self, kind: str, args: tuple) -> Any:
        run = getattr(self.base, kind)
        started = time.perf_counter()
        answer = _split(kind, run(*args), [len(args[0])])[0]  # a copy, as from a batch: buffers may be reused
        self._report(kind, len(args[0]), time.perf_counter() - started)
        return answer

    def _report(self, kind: str, rows: int, seconds: float) -> None:
        """``on_batch`` after a graph run; metrics never stop captions."""
        try:
            self.on_batch(kind, rows, seconds)
        except Exception:
            pass

    # -- the scheduler -----------------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stops the scheduler once the jobs in flight are done (at most ``timeout`` seconds)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._scheduler.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _schedule(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            for kind in KINDS:
                self._execute(kind, [job for job in batch if job.call is not None and job.call[0] == kind])

    def _next_batch(self) -> Optional[list[Job]]:
        """The jobs whose pending calls run now (under the condition); waits until there are some. None: stop."""
        straggler_deadline: Optional[float] = None
        while True:
            for job in [*self._loop, *self._new]:
                if job.cancelled and job.call is not None:  # answered Cancelled at once, wherever it waits
                    self._answer(job, error=Cancelled())
            now, timeout = time.perf_counter(), None
            rows = sum(job.rows for job in self._loop)
            if self._loop:
                waiting = [job for job in self._loop if job.call is None and not job.direct]
                if waiting and (straggler_deadline is None or now < straggler_deadline):
                    straggler_deadline = straggler_deadline or now + STRAGGLER_S
                    self._cond.wait(straggler_deadline - now)
                    continue
                batch = [job for job in self._loop if job.call is not None]
                if self.mode == "step" and self._new:
                    timeout = self._gathering(now, rows)
                    if timeout is None:
                        batch += self._admit(rows)
                if batch:
                    return batch
            elif self._new:
                timeout = self._gathering(now, 0)
                if timeout is None:
                    batch = self._admit(0)
                    if batch:
                        return batch
            elif self._stopping:
                return None
            self._cond.wait(timeout)

    def _gathering(self, now: float, rows: int) -> Optional[float]:
        """None when the new jobs are to be let in now; else how long to wait for more (others are on their way,
        the first has waited less than max_wait, and they do not fill the batch yet)."""
        if self.mode == "none" or rows + sum(job.rows for job in self._new) >= self.max_batch \
                or self.incoming() == 0:
            return None
        left = min(job.submitted for job in self._new) + self.max_wait - now
        return left if left > 0 else None

    def _admit(self, rows: int) -> list[Job]:
        """New jobs let into the batch (``rows`` in it already), in arrival order, while they fit in max_batch (a
        job larger than that runs alone); one at a time in mode "none"."""
        admitted = []
        for job in list(self._new):
            if job.cancelled or job.call is None:  # answered Cancelled: its thread is leaving
                continue
            if admitted and self.mode == "none" or rows and rows + job.rows > self.max_batch:
                break
            self._new.remove(job)
            job.in_loop, job.started = True, time.perf_counter()
            self._loop.append(job)
            admitted.append(job)
            rows += job.rows
        return admitted

    def _answer(self, job: Job, answer: Any = None, error: Optional[BaseException] = None) -> None:
        job.call, job.answer, job.error = None, answer, error
        job.answered.set()

    def _execute(self, kind: str, jobs: list[Job]) -> None:
        """Runs the jobs' pending calls of one kind as one graph call; when it fails, each again on its own, so
        that only the job whose rows the graph refuses gets the error."""
        if not jobs:
            return
        calls = [job.call[1] for job in jobs]
        run = getattr(self.base, kind)
        sizes = [len(call[0]) for call in calls]
        started = time.perf_counter()
        try:
            # Copies even for one job: an answer may be buffers that the next step overwrites (BoundGreedySteps),
            # and the next step may be another job's while this one's thread is still between its calls.
            answers = _split(kind, run(*(calls[0] if len(jobs) == 1 else _merge(kind, calls))), sizes)
        except Exception:
            if len(jobs) == 1:
                with self._cond:
                    self._answer(jobs[0], error=self._error_of(run, calls[0]))
                return
            for job in jobs:
                self._execute(kind, [job])
            return
        seconds = time.perf_counter() - started
        with self._cond:
            for job, answer in zip(jobs, answers):
                self._answer(job, answer)
        self._report(kind, sum(sizes), seconds)

    @staticmethod
    def _error_of(run: Callable, args: tuple) -> BaseException:
        try:  # the exception itself, raised again in the job's thread (the Captioner reports it as the image's)
            run(*args)
        except Exception as e:
            return e
        return RuntimeError("a graph call failed once and then succeeded")


__all__ = ["BatchEngine", "Cancelled", "Job", "SharedInference", "STRAGGLER_S"]
