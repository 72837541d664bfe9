"""The captioning page's app: clients/web at ``/``, the JavaScript runtime (clients/js/src) at ``/js/``,
onnxruntime-web's WASM build at ``/ort/`` and a bundle at ``/bundle/``; captions are computed in the
browser, and the server only hands out files.

Each mount is a Starlette ``StaticFiles`` that serves only regular files whose real path (every link
resolved) is inside its folder, and never lists a folder. Every response says ``Cache-Control:
no-store`` and carries the cross-origin isolation headers that multi-threaded WASM needs
(``?threads=4``).

    app = page_app(bundle)                  # a Starlette app; capkit.serve.server.Server(app).serve_forever()
    Mount("/page", app=page_app(bundle))    # or beside another app's routes
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.responses import FileResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capkit.runtime.errors import CapkitError, printable
from capkit.serve import page_folders

# Set here rather than guessed from the machine's /etc/mime.types: the browser refuses a module script or
# streaming WASM compilation with the wrong type.
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".wasm": "application/wasm", ".json": "application/json", ".map": "application/json",
                 ".onnx": "application/octet-stream", ".ort": "application/octet-stream"}

PAGE_HEADERS = {
    # Cross-origin isolation: SharedArrayBuffer, and so onnxruntime-web's threads, need the first two.
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",  # a bundle re-exported in place is fetched again, never mixed with a cached graph
    "X-Content-Type-Options": "nosniff",
}


def content_type(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class FolderFiles(StaticFiles):
    """``StaticFiles`` over one folder, without following links out of it (``follow_symlink=False``: a path
    is looked up by its real path, which must lie inside the folder's), with :data:`CONTENT_TYPES`, and with
    any path the operating system refuses (a NUL, a name too long, a link loop) answered 404 like a
    missing file."""

    def __init__(self, folder: Path, index: bool = False) -> None:
        super().__init__(directory=folder, html=index, follow_symlink=False)

    def lookup_path(self, path: str) -> tuple[str, Optional[os.stat_result]]:
        try:
            return super().lookup_path(path)
        except (OSError, ValueError):  # Starlette re-raises most OSErrors (a 500 and a traceback)
            return "", None

    def file_response(self, full_path: str, stat_result: os.stat_result, scope: Scope,  # type: ignore[override]
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if isinstance(response, FileResponse):
            response.headers["content-type"] = content_type(str(full_path))
        return response


class ResponseHeaders:
    """ASGI middleware: sets ``headers`` on every HTTP response of the app it wraps (errors included)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def page_app(bundle: Path, folders: Optional[dict[str, Path]] = None) -> Starlette:
    """The page's app with ``bundle`` (a folder) under ``/bundle/``. ``folders``: the page's own folders by URL
    prefix (default: :func:`capkit.serve.page_folders`, the source checkout's; tests give others). CapkitError,
    one line, when a folder is missing."""
    mounts = {**(folders if folders is not None else page_folders()), "bundle": Path(bundle)}
    for prefix, folder in mounts.items():
        if not folder.is_dir():
            raise CapkitError(f"{printable(str(folder))} is not a folder (to serve at /{prefix})")
    # Longest prefix first, the page itself ("") last: it catches every path no other mount takes.
    routes = [Mount(f"/{prefix}" if prefix else "", app=FolderFiles(folder, index=not prefix))
              for prefix, folder in sorted(mounts.items(), key=lambda item: -len(item[0]))]
    return Starlette(routes=routes, middleware=[Middleware(ResponseHeaders, headers=PAGE_HEADERS)])


__all__ = ["CONTENT_TYPES", "PAGE_HEADERS", "FolderFiles", "ResponseHeaders", "content_type", "page_app"]
