"""``capkit serve-web BUNDLE``: the on-device captioning page (clients/web) on a local web server.

The page, the JavaScript runtime (clients/js/src) and onnxruntime-web's WASM files are served with
the bundle under ``/bundle/``; captions are computed in the browser, and the server only hands out
files. It sends the cross-origin isolation headers that multi-threaded WASM needs (``?threads=4``).
"""

from __future__ import annotations

import functools
import http.server
import mimetypes
import os
import posixpath
import urllib.parse
from pathlib import Path
from typing import Optional

import click

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "clients" / "web"
JS_SRC = ROOT / "clients" / "js" / "src"
ORT_DIST = ROOT / "clients" / "js" / "node_modules" / "onnxruntime-web" / "dist"
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".css": "text/css", ".html": "text/html; charset=utf-8"}


class WebHandler(http.server.SimpleHTTPRequestHandler):
    """Maps ``/js/``, ``/ort/`` and ``/bundle/`` to their folders and the rest to clients/web; no listings."""

    mounts: dict[str, Path] = {}

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        parts = [p for p in posixpath.normpath(path).split("/") if p not in ("", ".", "..")]
        root = WEB
        if parts and parts[0] in self.mounts:
            root, parts = self.mounts[parts[0]], parts[1:]
        return str(root.joinpath(*parts)) if parts else str(root / "index.html") if root == WEB else str(root)

    def list_directory(self, path):  # type: ignore[override]
        self.send_error(404, "No listing")
        return None

    def guess_type(self, path):  # type: ignore[override]
        return TYPES.get(os.path.splitext(str(path))[1], None) or mimetypes.guess_type(str(path))[0] or "application/octet-stream"

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet unless asked
        if os.environ.get("CAPKIT_SERVE_LOG"):
            super().log_message(format, *args)


def make_server(bundle: Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server for the page with ``bundle`` under /bundle/ (not started). Raises click.ClickException
    when onnxruntime-web is not installed."""
    if not (WEB / "index.html").is_file() or not JS_SRC.is_dir():  # an installed wheel carries no clients/
        raise click.ClickException("serve-web serves the page from a source checkout of capkit (clients/web and "
                                   "clients/js), which an installed package does not carry: clone the repository "
                                   "and run scripts/setup.sh there")
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        raise click.ClickException(f"onnxruntime-web is not installed in {ORT_DIST.parents[1]} (run scripts/setup.sh, "
                                   "or npm ci in clients/js)")
    handler = type("Handler", (WebHandler,), {"mounts": {"js": JS_SRC, "ort": ORT_DIST, "bundle": Path(bundle).resolve()}})
    return http.server.ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(WEB)))


@click.command("serve-web")
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (the page needs localhost "
              "or HTTPS for WebCrypto).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve_web(bundle: Optional[Path], host: str, port: int) -> None:
    """Serve the captioning page for BUNDLE (default: runs/latest/bundle); captions run in the browser."""
    from capkit.runtime.bundle import default_bundle, load_bundle
    from capkit.runtime.errors import CapkitError

    folder = bundle if bundle is not None else default_bundle()
    try:
        load_bundle(folder)  # format_version, schema and sha256, checked before serving
    except CapkitError as e:
        raise click.ClickException(str(e)) from None
    try:
        server = make_server(folder, host, port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    url = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{server.server_address[1]}/"
    click.echo(f"Serving {folder} at {url} (add ?threads=4 for multi-threaded WASM); Ctrl+C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
