"""``capkit serve [BUNDLE]``: the HTTP captioning service (``POST /v1/captions``; docs/serve.md), a thin command over
:mod:`capkit.serve.workers` (one process, or ``--workers N``) and :mod:`capkit.serve.ray_serve` (``--ray``).

The service's limits and batching are the fields of :class:`capkit.serve.settings.ServeSettings`, one option each
(flag, range, default and help from the field).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import click

from capkit.cli.options import device_option, status, threads_option, user_errors
from capkit.serve.settings import ServeSettings

SERVE_MODULES = ("starlette", "uvicorn", "prometheus_client", "python_multipart")


def _setting_option(f: dataclasses.Field) -> Callable[[Callable], Callable]:
    spec = f.metadata
    if "choices" in spec:
        kind: Any = click.Choice(spec["choices"])
    elif isinstance(f.default, int):
        kind = click.IntRange(spec["minimum"], spec["maximum"])
    else:
        kind = click.FloatRange(spec["minimum"], spec["maximum"])
    return click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=f.default, show_default=True,
                        help=spec["help"])


def settings_options(f: Callable) -> Callable:
    for field in reversed(dataclasses.fields(ServeSettings)):
        f = _setting_option(field)(f)
    return f


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: a free one).")
@device_option
@threads_option
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Processes, each with its own model, on one port (each with ONNX Runtime's threads for all the "
                   "cores, as one: a request alone gets them all; the service's idle threads sleep, so under load the "
                   "workers share the cores).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Serve as a Ray Serve deployment on the Ray cluster at ADDRESS ('auto' finds a running one), or on "
                   "a local one with --ray alone. Needs capkit[ray] and ray[serve].")
@click.option("--replicas", type=click.IntRange(1, 4096), default=None, help="With --ray: replicas, one model each "
              "[default: 1].")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One line per request on stderr.")
@click.option("--web", is_flag=True, help="Also serve the in-browser captioning page at /web/ (a source checkout).")
@settings_options
def serve(bundle: Optional[Path], host: str, port: int, device: str, threads: Optional[int], workers: int,
          ray_address: Optional[str], replicas: Optional[int], access_log: bool, web: bool, **fields: Any) -> None:
    """Serve captions of BUNDLE (default: runs/latest/bundle) over HTTP: POST /v1/captions with an image as the body
    (or several as multipart files), decoding options as query fields; /healthz, /readyz, /metrics, /openapi.json.

    \b
    capkit serve runs/latest/bundle --port 8000
    curl --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/captions?temperature=0.7&seed=1'
    """
    from capkit.runtime.bundle import default_bundle, load_bundle
    from capkit.runtime.errors import printable
    from capkit.serve import require_extra

    folder = bundle if bundle is not None else default_bundle()
    with user_errors():
        require_extra("capkit serve", SERVE_MODULES)
        settings = ServeSettings(**fields).checked()
        if ray_address is not None:
            if workers != 1 or web:
                raise click.UsageError("--workers and --web are for serving on this machine: with --ray, give "
                                       "--replicas")
            from capkit.serve.ray_serve import require_ray_serve, serve_on_ray

            require_ray_serve()
            load_bundle(folder)
            serve_on_ray(folder, settings, address=ray_address, host=host, port=port, replicas=replicas or 1,
                         threads=threads or 1, status=click.echo)  # the URL line on stdout, as below
            return
        if replicas is not None:
            raise click.UsageError("--replicas is for --ray (on this machine: --workers)")
        load_bundle(folder)  # format_version, schema and sha256, checked before listening
        pages = None
        if web:
            from capkit.serve import page_folders

            pages = {prefix: str(path) for prefix, path in page_folders().items()}
        from capkit.serve.server import listen
        from capkit.serve.workers import ServeSpec, serve as serve_here, serve_workers

        try:
            sock = listen(host, port)
        except OSError as e:
            raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    spec = ServeSpec(str(folder), settings, device=device, threads=threads, log=access_log, web=pages)
    address = sock.getsockname()
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    click.echo(f"Serving {printable(str(folder))} at http://{shown}:{address[1]}/v1/captions "
               f"({workers} worker{'s' * (workers > 1)}; /readyz says when the model is ready); Ctrl+C or SIGTERM "
               "drains and stops")
    try:
        code = serve_workers(spec, sock, workers, status=status) if workers > 1 else serve_here(spec, sock)
    finally:
        sock.close()
    if code:
        raise click.exceptions.Exit(1)


__all__ = ["serve", "settings_options"]
