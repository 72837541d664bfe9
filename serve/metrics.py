"""The service's Prometheus metrics (prometheus-client), served at ``/metrics`` in the text format.

Each :class:`Metrics` registers its own metrics in a registry of its own, so that several apps in one process
(tests) do not collide. With ``--workers N`` the worker processes share a folder (``PROMETHEUS_MULTIPROC_DIR``,
set by the parent before they start) and ``/metrics``, whichever worker answers, adds up every worker's
(prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("read", "preprocess", "queue", "decode")  # a request's time: body read, images preprocessed,
# waiting for the batch to let it in, and in the batch until its captions are done


class Metrics:
    def __init__(self) -> None:
        self._own = CollectorRegistry(auto_describe=True)
        registry = self._own
        self.requests = Counter("capkit_requests", "Requests to /v1/captions by outcome (ok, or the error_type).",
                                ["outcome"], registry=registry)
        self.images = Counter("capkit_images", "Images in answered requests by outcome (ok or error).", ["outcome"],
                              registry=registry)
        self.request_seconds = Histogram("capkit_request_seconds", "Time from a request's arrival to its answer.",
                                         buckets=SECONDS, registry=registry)
        self.stage_seconds = Histogram("capkit_stage_seconds", "A request's time in each stage (" + ", ".join(STAGES)
                                       + ").", ["stage"], buckets=SECONDS, registry=registry)
        self.batch_rows = Histogram("capkit_batch_rows", "Rows (images, or beams) in each graph run, by graph call "
                                    "(encode, step, greedy_step).", ["call"], buckets=ROWS, registry=registry)
        self.graph_seconds = Histogram("capkit_graph_seconds", "Time of each graph run, by graph call.", ["call"],
                                       buckets=SECONDS, registry=registry)
        self.in_flight = Gauge("capkit_in_flight_requests", "Requests taken on and not yet answered.",
                               multiprocess_mode="livesum", registry=registry)
        self.ready = Gauge("capkit_ready", "1 once the model is loaded and warmed up (per worker: summed).",
                           multiprocess_mode="livesum", registry=registry)

    def on_batch(self, call: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(call).observe(rows)
        self.graph_seconds.labels(call).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type: this process's metrics, or every worker's in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self._own), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drops a dead worker's live gauges (multiprocess mode; the parent calls it)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


__all__ = ["MULTIPROC_ENV", "Metrics", "STAGES", "worker_exited"]
