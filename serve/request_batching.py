"""Request batching, the "request" mode of :class:`~capkit.serve.batching.BatchEngine`: requests that arrived while
a batch ran wait until it has finished, then those with the same decoding options are decoded together by the
runtime's own decode loop in the engine's scheduler thread (their rows concatenated, each request's captions handed
back), as ``Captioner.caption_batch`` decodes a batch: no thread per request, no hand-over per step. A request that
finds the engine idle is decoded in its caller's thread instead (:meth:`RequestBatching.caption_now`).

The engine's state (its condition, the waiting jobs, ``incoming``, ``max_batch``) is :class:`BatchEngine`'s; this
mixin holds the methods of the mode, so that each mode reads in a file of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from capkit.runtime.captioner import Caption
from capkit.runtime.decoding import DecodingOptions

if TYPE_CHECKING:
    from capkit.serve.batching import Job

class _Reporting:
    """An inference that runs ``base``'s graphs and reports each run to ``report`` (mode "request")."""

    def __init__(self, base: Any, report: Callable[[str, int, float], None]) -> None:
        self._base, self._report = base, report
        self.device = getattr(base, "device", "cpu")
        if hasattr(base, "greedy_step"):
            self.greedy_step = lambda tokens, state: self._timed("greedy_step", tokens, state)

    def _timed(self, kind: str, *args: Any) -> Any:
        started = time.perf_counter()
        answer = getattr(self._base, kind)(*args)
        self._report(kind, len(args[0]), time.perf_counter() - started)
        return answer

    def encode(self, images: np.ndarray) -> Any:
        return self._timed("encode", images)

    def step(self, tokens: np.ndarray, state: Any) -> Any:
        return self._timed("step", tokens, state)

    def select(self, state: Any, rows: np.ndarray) -> Any:
        return self._base.select(state, rows)


class RequestBatching:
    """BatchEngine's mode "request" (see the module). Mixed into BatchEngine, whose ``__init__`` sets what these use:
    ``_cond``, ``_new``, ``_stopping``, ``_decoding``, ``_requests`` (the Captioner over a :class:`_Reporting`
    inference), ``incoming``, ``max_batch`` and ``_gathering``."""

    def caption_now(self, pixels: np.ndarray, labels: list[Optional[str]], options: DecodingOptions,
                    arrived: Callable[[], None] = lambda: None) -> Optional[list[Caption]]:
        """Mode "request": when the engine is idle (no batch decoding or waiting, and no request on its way but the
        caller's own: ``incoming() <= 1``), the captions of ``pixels`` decoded in the calling thread, as the scheduler
        would decode a batch of this one request; ``arrived()`` is called once the engine has taken it on. None when
        the engine is not idle, or in another mode: :meth:`submit` it then. Requests arriving meanwhile wait for this
        batch as they would for the scheduler's. What it saves is the hand-over to the scheduler's thread and back
        (two thread wake-ups, each a wait for a core that ONNX Runtime's threads hold) where nothing could be batched
        anyway: at concurrency 1, every request."""
        with self._cond:
            if not self._idle():
                return None
            self._decoding += 1
        try:
            arrived()
            return self._requests.caption_pixels(pixels, labels, options)
        finally:
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()

    def idle(self) -> bool:
        """Whether :meth:`caption_now` would decode now: mode "request", nothing decoding or waiting, and no request
        on its way but the caller's own. (A hint: the engine may be busy by the time the caller acts on it.)"""
        with self._cond:
            return self._idle()

    def _idle(self) -> bool:
        return self.mode == "request" and not (self._stopping or self._decoding or self._new or self.incoming() > 1)

    def _schedule_requests(self) -> None:
        """Mode "request": the jobs waiting together, with the same decoding options, decoded as one batch by one
        decode loop in this thread (their rows concatenated, each job's captions handed back), as
        ``Captioner.caption_batch`` decodes a batch: no thread per job, no hand-over per step."""
        while True:
            with self._cond:
                batch = self._next_requests()
                if batch is None:
                    return
                self._decoding += 1
            try:
                self._decode_requests(batch)
            finally:
                with self._cond:
                    self._decoding -= 1
                    self._cond.notify_all()

    def _decode_requests(self, batch: list[Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # not timed out already
        if not batch:
            return
        for job in batch:
            job.started = time.perf_counter()
        pixels = np.concatenate([job.pixels for job in batch])  # (B, 3, crop, crop)
        try:
            captions = self._requests.caption_pixels(pixels, [label for job in batch for label in job.labels],
                                                     batch[0].options)
        except BaseException as e:  # a bug: each request's answer, never a lost scheduler
            for job in batch:
                job.future.set_exception(e)
            return
        start = 0
        for job in batch:
            job.future.set_result(captions[start:start + len(job.labels)])
            start += len(job.labels)

    def _next_requests(self) -> Optional[list[Job]]:
        """(Under the condition.) The next batch of mode "request": the first waiting job and those after it with
        the same options, while their rows fit in max_batch (a larger job alone); waits for jobs, and for a batch that
        :meth:`caption_now` decodes to finish. None: stop."""
        while True:
            for job in [job for job in self._new if job.cancelled]:  # timed out while waiting: dropped
                job.future.cancel()
                self._new.remove(job)
            if self._new and not self._decoding:
                timeout = self._gathering(time.perf_counter(), 0)
                if timeout is None:
                    first, rows, batch = self._new[0], 0, []
                    for job in list(self._new):
                        if job.options != first.options:
                            continue
                        if batch and rows + job.rows > self.max_batch:
                            break
                        batch.append(job)
                        rows += job.rows
                        self._new.remove(job)
                    return batch
            elif self._stopping and not self._new:
                return None
            else:
                timeout = None
            self._cond.wait(timeout)


__all__ = ["RequestBatching"]
