"""The captioning service behind the HTTP app: loading and warming the model, taking requests on (or answering
429 / 503), preprocessing their images and captioning them through the :class:`~capkit.serve.batching.BatchEngine`.

Everything here runs on the app's event loop except the model: loading (a thread, so that ``/healthz`` and
``/readyz`` answer meanwhile), preprocessing (``preprocess_threads`` threads; requests wait their turn on a
semaphore, so no work piles up behind a request that has timed out) and decoding (the engine's threads), except
for a request that finds the server idle: a small one is preprocessed and decoded on the loop itself, a larger one
in its preprocessing thread (``INLINE_PIXELS``, :meth:`BatchEngine.caption_now`). A caption is the Captioner's, image for image: the same preprocessing, ``failed_caption`` for an image that
cannot be read, ``caption_pixels`` for the rest, ``Caption.to_dict`` for the JSON.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
from PIL import Image

from capkit.runtime.bundle import Bundle
from capkit.runtime.captioner import Caption, Captioner, failed_caption
from capkit.runtime.decoding import DecodingOptions
from capkit.runtime.errors import CapkitError, one_line
from capkit.serve.batching import BatchEngine
from capkit.serve.metrics import Metrics
from capkit.serve.settings import ServeSettings


# How ONNX Runtime runs in the service, whose other threads (the event loop, preprocessing, the next request's graph
# call) need the cores that it would otherwise keep busy. Measured on 2 cores at concurrency 1, interleaved with the
# previous settings (docs/serve.md), p99 fell from 14.5-14.8 ms to 12.5-12.9 with both (p50 rose from 7.3-7.5 ms to
# 9.0-9.2), and images/s at concurrency 32 did not fall:
SPIN_US = 0  # idle intra-op threads sleep at once, rather than spin for the next call (OnnxInference's default)
STEP_THREADS = 1  # the decoder step graph (a small LSTM step, run once a word) on one thread: no worker to wake
# An idle server captions a small image on its event loop, without handing it to a preprocessing thread and back:
# each hand-over wakes a sleeping thread, which at one client cost about 2 ms at the median and 3 at p99 here
# (docs/serve.md). Small: the image headers say at most this many pixels in all, so that the loop is held for a few
# milliseconds at most (a 640x480 JPEG: about 2 ms to decode and preprocess); anything larger, or any request that
# finds another on its way, goes through the threads as before.
INLINE_PIXELS = 1_000_000


class ApiError(CapkitError):
    """A request answered with an error: ``status``, ``error_type`` (one of ERROR_TYPES) and a one-line message."""

    def __init__(self, status: int, error_type: str, message: str, headers: Optional[dict[str, str]] = None,
                 extra: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.headers, self.extra = status, error_type, headers or {}, extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "error_type": self.error_type, **self.extra}


ERROR_TYPES = {  # error_type -> (status, when); the API's documentation and OpenAPI list these
    "bad_request": (400, "the request is malformed (a broken multipart body, no image in it)"),
    "not_found": (404, "no such path"),
    "method_not_allowed": (405, "the path takes other methods"),
    "too_large": (413, "the body is over --max-body-mb, or it holds more than --max-images images"),
    "invalid_option": (422, "a decoding option is unknown, given twice, of the wrong type or out of its range"),
    "unreadable_image": (422, "no image of the request could be captioned (each image's error is in captions)"),
    "overloaded": (429, "--max-queue requests are taken on already; retry after Retry-After seconds"),
    "internal": (500, "a bug in capkit (the server logs it)"),
    "not_ready": (503, "the model is still loading and warming up"),
    "draining": (503, "the server is shutting down (SIGTERM) and finishes the requests it took on"),
    "timeout": (504, "the request took longer than --timeout seconds"),
}


@dataclass
class Upload:
    """One image of a request: its bytes and its name (a multipart file's filename; None for a raw body)."""

    data: bytes
    label: Optional[str] = None


@dataclass
class Ticket:
    """A request taken on: when it arrived and what each stage took (seconds)."""

    arrived: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)
    submitted: bool = False  # its images have reached the engine (no longer "incoming")


class CaptionService:
    """``bundle`` served with ``settings``; :meth:`start` loads it in a thread (:attr:`state` "loading", then
    "ready", or "failed" with :attr:`error`), :meth:`drain` finishes the requests taken on, :meth:`close` stops."""

    def __init__(self, bundle: Union[str, os.PathLike, Bundle, None], settings: ServeSettings = ServeSettings(), *,
                 device: str = "auto", threads: Optional[int] = None, metrics: Optional[Metrics] = None) -> None:
        self.bundle, self.device, self.threads = bundle, device, threads
        self.settings = settings.checked()
        self.metrics = metrics or Metrics()
        self.state, self.error = "loading", None
        self.captioner: Optional[Captioner] = None
        self.engine: Optional[BatchEngine] = None
        self._taken = 0  # requests taken on and not yet answered
        self._incoming = 0  # of those, the ones whose images have not reached the engine yet
        self._incoming_lock = threading.Lock()  # _incoming changes on the event loop and in preprocessing threads
        self._preprocess = ThreadPoolExecutor(self.settings.preprocess_threads, thread_name_prefix="capkit-preprocess")
        self._slots: Optional[asyncio.Semaphore] = None  # made on the app's loop
        self._started = False

    # -- life -----------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Loads the model, starts the engine and warms both up; then "ready". Raises what the Captioner raises."""
        settings = self.settings
        # The engine batches numpy states; IO binding keeps them on a device as OrtValues.
        captioner = Captioner(self.bundle, device=self.device, threads=self.threads, io_binding=False,
                              step_threads=STEP_THREADS, spin_us=SPIN_US)
        self.engine = BatchEngine(captioner, mode=settings.batching, max_batch=settings.max_batch,
                                  max_wait=settings.max_wait_ms / 1000, incoming=lambda: self._incoming,
                                  on_batch=self.metrics.on_batch, max_jobs=settings.max_queue + 1)
        self.captioner = captioner
        crop = captioner.spec.crop
        for rows in sorted({1, min(settings.max_batch, settings.max_images)}):  # every graph, at both ends of batching
            pixels = np.zeros((rows, 3, crop, crop), np.float32)
            self.engine.submit(pixels, [None] * rows, captioner.defaults).future.result()
        self.state = "ready"
        self.metrics.ready.set(1)

    def start(self, on_failure: Callable[[str], None] = lambda message: None) -> None:
        """:meth:`load` in a thread (once); a failure sets "failed" and calls ``on_failure`` with one line."""
        if self._started or self.state != "loading":  # loaded already (a Ray Serve replica loads in its constructor)
            return
        self._started = True

        def run() -> None:
            try:
                self.load()
            except Exception as e:  # a bundle ONNX Runtime refuses, ...: the server says so and stops
                self.state, self.error = "failed", one_line(e)
                on_failure(self.error)

        threading.Thread(target=run, name="capkit-load", daemon=True).start()

    async def drain(self) -> None:
        """New requests are answered 503 from now on; returns once those taken on are answered (at most
        ``settings.drain`` seconds)."""
        if self.state == "ready":
            self.state = "draining"
        self.metrics.ready.set(0)
        deadline = time.monotonic() + self.settings.drain
        while self._taken and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self._preprocess.shutdown(wait=False, cancel_futures=True)

    # -- requests -------------------------------------------------------------------------------------------
    def check_ready(self) -> None:
        if self.state == "ready":
            return
        if self.state == "draining":
            raise ApiError(503, "draining", "the server is shutting down: retry on another")
        raise ApiError(503, "not_ready", "the model is loading" if self.state == "loading"
                       else f"the model could not be loaded: {self.error}")

    def take_on(self) -> Ticket:
        """A ticket for a new request (pair with :meth:`release`); ApiError 503 while not ready, 429 when
        ``max_queue`` requests are taken on already."""
        self.check_ready()
        if self._taken >= self.settings.max_queue:
            raise ApiError(429, "overloaded", f"{self._taken} requests are being served (--max-queue "
                           f"{self.settings.max_queue}); retry later", headers={"Retry-After":
                                                                                str(self.settings.retry_after)})
        self._taken += 1
        with self._incoming_lock:
            self._incoming += 1
        self.metrics.in_flight.inc()
        return Ticket()

    def release(self, ticket: Ticket) -> None:
        self._taken -= 1
        self.metrics.in_flight.dec()
        self._arrived(ticket)

    def _arrived(self, ticket: Ticket) -> None:
        """The ticket's request no longer counts as on its way to the engine (which may stop waiting for it). Any
        thread."""
        with self._incoming_lock:
            if ticket.submitted:
                return
            ticket.submitted = True
            self._incoming -= 1
        if self.engine is not None:
            self.engine.poke()

    async def caption(self, uploads: list[Upload], given: dict[str, Any], ticket: Ticket) -> list[Caption]:
        """One Caption per upload, in order (an unreadable image gets its error Caption). ``given``: decoding
        options (settings.request_options); ApiError 422 when they are bad."""
        assert self.captioner is not None and self.engine is not None
        try:
            options = self.captioner.options(**given)
        except CapkitError as e:
            raise ApiError(422, "invalid_option", one_line(e)) from None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.preprocess_threads)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # requests read together reach take_on first: then none of them finds the server idle
        if self.engine.idle() and self._small(uploads):  # on the loop: nothing else is waiting for it
            rows, results = self._prepare_and_caption(uploads, options, ticket)
        else:
            async with self._slots:
                rows, results = await loop.run_in_executor(self._preprocess, self._prepare_and_caption, uploads,
                                                           options, ticket)
        self._arrived(ticket)
        where = [i for i, result in enumerate(results) if result is None]
        if where:  # the engine was busy: the rows join its next batch
            job = self.engine.submit(np.stack(rows), [uploads[i].label for i in where], options)
            try:
                captions = await asyncio.wrap_future(job.future)
            except asyncio.CancelledError:  # timed out: the engine drops the job at its next graph call
                self.engine.cancel(job)
                raise
            ticket.stages["queue"] = (job.started or job.submitted) - job.submitted
            ticket.stages["decode"] = time.perf_counter() - (job.started or job.submitted)
            for i, caption in zip(where, captions):
                results[i] = caption
        return results  # type: ignore[return-value]

    @staticmethod
    def _small(uploads: list[Upload]) -> bool:
        """Whether the images' headers (read by Pillow, nothing decoded) say INLINE_PIXELS or fewer in all; False for
        anything Pillow cannot open at once (the threads then read it, and report it as usual)."""
        pixels = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                for upload in uploads:
                    with Image.open(io.BytesIO(upload.data)) as image:
                        pixels += image.width * image.height
                    if pixels > INLINE_PIXELS:
                        return False
        except Exception:
            return False
        return True

    def _prepare_and_caption(self, uploads: list[Upload], options: DecodingOptions,
                             ticket: Ticket) -> tuple[list[np.ndarray], list[Optional[Caption]]]:
        """(A preprocessing thread.) :meth:`_prepare`; then, when the engine is idle, the captions too, decoded in
        this thread (:meth:`BatchEngine.caption_now`). The rows and the results (None where a row is still to be
        captioned: the engine was busy)."""
        assert self.engine is not None
        started = time.perf_counter()
        rows, results = self._prepare(uploads)
        ticket.stages["preprocess"] = time.perf_counter() - started
        where = [i for i, result in enumerate(results) if result is None]
        if not where:
            return rows, results
        started = time.perf_counter()
        captions = self.engine.caption_now(np.stack(rows), [uploads[i].label for i in where], options,
                                           arrived=lambda: self._arrived(ticket))
        if captions is None:
            return rows, results
        ticket.stages["queue"], ticket.stages["decode"] = 0.0, time.perf_counter() - started
        for i, caption in zip(where, captions):
            results[i] = caption
        return rows, results

    def _prepare(self, uploads: list[Upload]) -> tuple[list[np.ndarray], list[Optional[Caption]]]:
        """Each upload preprocessed (rows, in order) or its error Caption (None where it has a row)."""
        assert self.captioner is not None
        rows: list[np.ndarray] = []
        results: list[Optional[Caption]] = []
        for upload in uploads:
            try:
                rows.append(self.captioner.preprocess(upload.data))
                results.append(None)
            except Exception as e:  # anything at all (MemoryError included): this image's error, as in a batch
                results.append(failed_caption(upload.label, e))
        return rows, results


__all__ = ["ApiError", "CaptionService", "ERROR_TYPES", "Ticket", "Upload"]
