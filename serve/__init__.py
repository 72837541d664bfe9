"""capkit's web servers: Starlette apps on uvicorn, the optional ``serve`` extra (``pip install "capkit[serve]"``).

- :mod:`capkit.serve.web`: the captioning page's app (``capkit serve-web``), :func:`~capkit.serve.web.page_app`.
- :mod:`capkit.serve.server`: :class:`~capkit.serve.server.Server`, any such app on uvicorn with the limits
  a server facing hostile clients needs (idle connections closed, a listen backlog, quiet logs, a drain on SIGTERM).
- ``capkit serve``, the captioning API: :mod:`capkit.serve.api` (the app), :mod:`~capkit.serve.service` (requests
  taken on, preprocessed, captioned), :mod:`~capkit.serve.batching` (batching across requests through the
  runtime's decode loop), :mod:`~capkit.serve.metrics`, :mod:`~capkit.serve.openapi`,
  :mod:`~capkit.serve.settings`, :mod:`~capkit.serve.workers` (``--workers N``), :mod:`~capkit.serve.ray_serve`.

This module imports neither Starlette nor uvicorn, so that a command can check what is missing first and say
so in one line (:func:`require_extra`); the page's folders are here for the same reason: a runtime-only install
lacks both, and the source checkout is the thing to tell it about first.
"""

from __future__ import annotations

from pathlib import Path

from capkit.runtime.errors import CapkitError

LOG_ENV = "CAPKIT_SERVE_LOG"  # set (to anything): the servers log their requests to stderr; quiet otherwise

# The page's files, in a source checkout (an installed wheel carries no clients/).
CHECKOUT = Path(__file__).resolve().parents[1]
WEB = CHECKOUT / "clients" / "web"
JS_SRC = CHECKOUT / "clients" / "js" / "src"
ORT_DIST = CHECKOUT / "clients" / "js" / "node_modules" / "onnxruntime-web" / "dist"


def page_folders() -> dict[str, Path]:
    """The page's own folders by URL prefix (``""``: the page itself, ``js``: the JavaScript runtime, ``ort``:
    onnxruntime-web's WASM build). CapkitError, one line, when this is no source checkout or onnxruntime-web's
    npm package is missing."""
    if not (WEB / "index.html").is_file() or not JS_SRC.is_dir():
        raise CapkitError("serve-web serves the page from a source checkout of capkit (clients/web and clients/js), "
                          "which an installed package does not carry: clone the repository and run scripts/setup.sh "
                          "there")
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        raise CapkitError(f"onnxruntime-web is not installed in {ORT_DIST.parents[1]} (run scripts/setup.sh, or npm ci "
                          "in clients/js)")
    return {"": WEB, "js": JS_SRC, "ort": ORT_DIST}


def require_extra(command: str, modules: tuple[str, ...] = ("starlette", "uvicorn")) -> None:
    """CapkitError, one line saying how to install them, when one of ``modules`` (default: Starlette and uvicorn;
    ``capkit serve`` also needs prometheus_client and multipart) cannot be imported."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise CapkitError(f"{command} needs the serve extra ({e.name or module} is missing): "
                              'pip install "capkit[serve]" (in a checkout: pip install -e ".[serve]")') from None


__all__ = ["JS_SRC", "LOG_ENV", "ORT_DIST", "WEB", "page_folders", "require_extra"]
