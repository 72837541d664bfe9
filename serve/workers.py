"""Running the service: one process (:func:`serve`), or ``--workers N`` processes on one listening socket
(:func:`serve_workers`): the kernel hands each new connection to one of them, each holds its own model.

The parent binds the socket, starts the workers (``spawn``: a fresh interpreter, no ONNX Runtime threads forked),
restarts one that dies, and on SIGTERM or Ctrl+C passes SIGTERM on to every worker, each of which drains (finishes
what it took on, answers new work 503) and exits; a second signal kills them. Metrics: the workers share a folder
(prometheus-client's multiprocess mode), so /metrics adds every worker's up whichever answers.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from capkit.serve.settings import ServeSettings

multiprocessing.allow_connection_pickling()  # a listening socket goes to each worker
STARTUP_FAILED = 3  # a worker's exit status when its model cannot be loaded: restarting it would fail again


@dataclass(frozen=True)
class ServeSpec:
    """Everything a worker needs to build the service (picklable)."""

    bundle: str
    settings: ServeSettings
    device: str = "auto"
    threads: Optional[int] = None
    log: bool = True  # access lines on stderr
    web: Optional[dict[str, str]] = None  # the page's folders by URL prefix (capkit.serve.page_folders), or None


def serve(spec: ServeSpec, sock: socket.socket) -> int:
    """Serves ``spec`` on ``sock`` in this process until SIGTERM or Ctrl+C (drained) or a failure to load the model
    (one line on stderr). The exit status: 0, or STARTUP_FAILED."""
    from capkit.serve.api import caption_app
    from capkit.serve.server import Server
    from capkit.serve.service import CaptionService

    service = CaptionService(spec.bundle, spec.settings, device=spec.device, threads=spec.threads)
    failure: list[str] = []
    web = None
    if spec.web is not None:
        from capkit.serve.web import page_app

        folders = {prefix: Path(folder) for prefix, folder in spec.web.items()}
        web = page_app(Path(spec.bundle), folders)
    server: Optional[Server] = None

    def failed(message: str) -> None:
        failure.append(message)
        print(f"Error: {message}", file=sys.stderr, flush=True)
        if server is not None:
            server.shutdown(timeout=0)

    app = caption_app(service, log=spec.log, web=web, on_failure=failed)
    server = Server(app, sock=sock, log=False, drain=service.drain, limit_concurrency=spec.settings.max_connections)
    server.serve_forever()
    return STARTUP_FAILED if failure else 0


def _worker(spec: ServeSpec, sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the parent, which sends SIGTERM
    sys.exit(serve(spec, sock))


def serve_workers(spec: ServeSpec, sock: socket.socket, workers: int, status=print) -> int:
    """``workers`` processes serving ``spec`` on ``sock`` until SIGTERM or Ctrl+C; 0 once they have drained, or
    STARTUP_FAILED when one could not load the model."""
    context = multiprocessing.get_context("spawn")
    metrics_dir = tempfile.mkdtemp(prefix="capkit-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers, read at their import
    stop: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: stop.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    processes: list = []
    code = 0
    try:
        def start() -> multiprocessing.process.BaseProcess:
            process = context.Process(target=_worker, args=(spec, sock), daemon=False)
            process.start()
            return process

        processes = [start() for _ in range(workers)]
        while not stop:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                from capkit.serve.metrics import worker_exited

                worker_exited(process.pid)
                if process.exitcode == STARTUP_FAILED:
                    stop.append(0)
                    code = STARTUP_FAILED
                    break
                status(f"worker {process.pid} exited ({process.exitcode}); starting another")
                processes[i] = start()
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + spec.settings.drain + 15
        for process in processes:
            while process.is_alive() and time.monotonic() < deadline and len(stop) < 2:
                process.join(0.2)
            if process.is_alive():  # a second signal, or past the deadline
                process.kill()
                process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


__all__ = ["STARTUP_FAILED", "ServeSpec", "serve", "serve_workers"]
