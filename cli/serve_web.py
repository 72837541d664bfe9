"""``capkit serve-web BUNDLE``: the on-device captioning page (clients/web) on a local web server.

The page, the JavaScript runtime (clients/js/src) and onnxruntime-web's WASM files are served with
the bundle under ``/bundle/`` by :func:`capkit.serve.web.page_app` on uvicorn (the ``serve`` extra);
captions are computed in the browser, and the server only hands out files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from capkit.cli.options import user_errors


def checked_folders() -> dict[str, Path]:
    """The page's folders, once this install can serve them; CapkitError, one line, when this is no source checkout
    (said first: an installed package lacks the page, whatever else it lacks), onnxruntime-web or the serve extra
    is missing."""
    from capkit.serve import page_folders, require_extra

    folders = page_folders()
    require_extra("serve-web")
    return folders


def make_server(bundle: Path, host: str = "127.0.0.1", port: int = 8000, folders: Optional[dict[str, Path]] = None):
    """The page's server for ``bundle`` (unchecked), listening but not serving yet (``serve_forever()`` or
    ``start()``: a :class:`capkit.serve.server.Server`). CapkitError as :func:`checked_folders` says, or when
    ``bundle`` is no folder; OSError when it cannot listen."""
    folders = folders if folders is not None else checked_folders()
    from capkit.serve.server import Server
    from capkit.serve.web import page_app

    return Server(page_app(bundle, folders), host, port)


@click.command("serve-web")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (the page needs localhost "
              "or HTTPS for WebCrypto).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve_web(bundle: Optional[Path], host: str, port: int) -> None:
    """Serve the captioning page for BUNDLE (default: runs/latest/bundle); captions run in the browser."""
    from capkit.runtime.bundle import default_bundle, load_bundle
    from capkit.runtime.errors import printable

    folder = bundle if bundle is not None else default_bundle()
    with user_errors():
        folders = checked_folders()  # what this install lacks, before what the bundle lacks
        load_bundle(folder)  # format_version, schema and sha256, checked before serving
        try:
            server = make_server(folder, host, port, folders)
        except OSError as e:
            raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    url = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{server.port}/"
    click.echo(f"Serving {printable(str(folder))} at {url} (add ?threads=4 for multi-threaded WASM); Ctrl+C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
