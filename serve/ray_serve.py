"""The same service as a Ray Serve deployment (``capkit[ray]`` with Ray Serve: ``pip install "ray[serve]"``):
``capkit serve BUNDLE --ray [ADDRESS]``.

Each replica holds one :class:`~capkit.serve.service.CaptionService` (a model, its batching engine, its limits)
behind the same Starlette app as ``capkit serve`` (:func:`~capkit.serve.api.caption_app`); Ray Serve's proxy
routes each HTTP request to a replica. A user who outgrows one machine adds nodes to the Ray cluster and
replicas (``--replicas``); capkit schedules nothing itself. The bundle reaches the replicas as in the bulk path
(:mod:`capkit.bulk.ray`): the driver puts its files in the object store once, each replica writes them to a
temporary folder and loads them from there (sha256 checked as always).

``ray`` is imported only when these functions are called.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from typing import Any, Optional, Union

from capkit.bulk.ray import bundle_payload, write_payload
from capkit.runtime.bundle import Bundle, load_bundle
from capkit.runtime.errors import CapkitError, Status, one_line
from capkit.serve.settings import ServeSettings

APP_NAME = "capkit"
PROXY_READY_S = 60  # seconds Ray Serve waits for its HTTP proxy to start (Ray's default: 5), unless set already


def require_ray_serve() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise CapkitError(f"--ray needs Ray Serve ({e.name or 'ray[serve]'} is missing): pip install "
                          '"capkit[ray]" "ray[serve]"') from None


def caption_deployment(bundle: Union[str, os.PathLike, Bundle, None], settings: ServeSettings, *, replicas: int = 1,
                       threads: Optional[int] = 1, num_cpus: float = 1, ship: bool = True) -> Any:
    """The service as a bound Ray Serve application (``serve.run`` it): ``replicas`` replicas, each with
    ``num_cpus`` CPUs and ``threads`` ONNX Runtime threads per graph, batching as ``settings`` say."""
    import ray
    from ray import serve

    settings = settings.checked()
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    source: Any = [ray.put(bundle_payload(loaded))] if ship else str(loaded.folder.resolve())

    # A replica takes on more requests than its service will, so that the service answers 429 past max_queue
    # itself, with Retry-After, rather than Ray queueing them unseen.
    @serve.deployment(name=APP_NAME, num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
                      max_ongoing_requests=settings.max_queue + 1)
    @serve.ingress()
    class CaptionDeployment:
        def __init__(self, source: Any, settings: ServeSettings, threads: Optional[int]) -> None:
            from capkit.serve.service import CaptionService

            self._folder: Optional[str] = None
            if isinstance(source, list):  # [ObjectRef of bundle_payload()], wrapped so that Ray hands over the ref
                self._folder = tempfile.mkdtemp(prefix="capkit-bundle-")
                write_payload(ray.get(source[0]), self._folder)
                source = self._folder
            self.service = CaptionService(source, settings, device="cpu", threads=threads)
            self.service.load()  # ready when constructed: Ray Serve routes to a replica once its constructor returns

        def __serve_build_asgi_app__(self) -> Any:
            from capkit.serve.api import caption_app

            return caption_app(self.service, log=False)

        def __del__(self) -> None:
            if self._folder:
                shutil.rmtree(self._folder, ignore_errors=True)

    return CaptionDeployment.bind(source, settings, threads)


def serve_on_ray(bundle: Union[str, os.PathLike, None], settings: ServeSettings, *, address: str = "local",
                 host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, threads: Optional[int] = 1,
                 status: Status = print) -> None:
    """Deploys the service on the Ray cluster at ``address`` ("local": starts one here) with Ray Serve's HTTP proxy
    on ``host``:``port``, and serves until SIGTERM or Ctrl+C; then deletes the application (and stops the local
    cluster it started)."""
    import logging

    import ray
    from ray import serve

    from capkit.bulk.ray import _connect

    # Ray Serve kills an HTTP proxy not ready within 5 s, and serve.start then fails: on a busy machine a new
    # worker process takes longer than that to start. A local cluster's workers inherit this environment.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_READY_S))
    started = _connect(address, replicas)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda number, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(caption_deployment(bundle, settings, replicas=replicas, threads=threads), name=APP_NAME,
                      route_prefix="/")
        except (ray.exceptions.RayError, TimeoutError) as e:  # TimeoutError: no HTTP proxy after Ray's 60 s
            raise CapkitError(f"Ray Serve did not start on {host}:{port}: {one_line(e, 300)}") from None
        status(f"Serving on Ray at http://{host}:{port}/v1/captions ({replicas} replica{'s' * (replicas > 1)}); "
               "Ctrl+C or SIGTERM stops")
        while not stop.wait(0.5):  # short waits: the signal handler runs between them
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            serve.delete(APP_NAME)
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()


__all__ = ["APP_NAME", "caption_deployment", "require_ray_serve", "serve_on_ray"]
