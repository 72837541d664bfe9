"""``capkit serve``'s HTTP API, a Starlette app over a :class:`~capkit.serve.service.CaptionService`.

- ``POST /v1/captions``: one image as the raw body, or several as multipart files (parts with a filename);
  decoding options (the fields of DecodingOptions: temperature, top_k, ...) as query fields, or as multipart
  form fields. The answer: ``{"captions": [...]}``, one object per image as ``capkit caption --json`` prints
  it, each ok or its own error (an image is named by its part's filename; null for a raw body).
- ``GET /healthz`` (alive), ``GET /readyz`` (200 once the model is loaded and warmed up, 503 before and while
  draining), ``GET /metrics`` (Prometheus text), ``GET /openapi.json``; the page app under ``/web/`` optionally.
- Every error is JSON ``{"error": ..., "error_type": ...}`` with its status (service.ERROR_TYPES), and every
  request gets one access-log line on stderr (``log``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, AsyncIterator, Callable, Optional

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capkit.bulk.output import caption_object
from capkit.runtime.decoding import DecodingOptionsError
from capkit.runtime.errors import one_line, printable
from capkit.serve.openapi import openapi
from capkit.serve.service import ApiError, CaptionService, Ticket, Upload
from capkit.serve.settings import OPTION_FIELDS, request_options

DISCARD_BYTES = 64 * 1024 * 1024  # of a body over the limit, this much more is read (and dropped) before the 413,
# so that a client still sending gets the answer rather than a reset; a longer body is cut off
DISCARD_S = 2.0  # and for at most this long
MAX_FORM_FIELDS = 4 * len(OPTION_FIELDS)
MAX_FIELD_BYTES = 1024  # a form field holds one option's value


class JSONLineResponse(JSONResponse):
    """JSON ending in a newline, so that answers printed one after another (curl) are one line each."""

    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"


def error_response(error: ApiError, scope: Optional[Scope] = None) -> JSONLineResponse:
    """The error's JSON answer; its error_type goes into ``scope`` too, for the access log and the metrics."""
    if scope is not None:
        scope["capkit.outcome"] = error.error_type
    return JSONLineResponse(error.body(), status_code=error.status, headers=error.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes; ApiError 413 past it (checked against Content-Length first)."""
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() and len(declared) < 20 else (0 if not declared else limit + 1)
    chunks: list[bytes] = []
    if size <= limit:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
    if size > limit:
        chunks.clear()
        if declared == "" or size <= limit + DISCARD_BYTES:  # a body a client is still sending: read it, then answer
            with contextlib.suppress(Exception), anyio.move_on_after(DISCARD_S):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit + DISCARD_BYTES:
                        break
        raise ApiError(413, "too_large", f"the body is over the limit of {limit:,} bytes (--max-body-mb)")
    return b"".join(chunks)


async def read_images(request: Request, service: CaptionService) -> tuple[list[Upload], dict[str, Any]]:
    """The request's images and decoding options; ApiError 400, 413 or 422 when they cannot be had."""
    settings = service.settings
    fields = list(request.query_params.multi_items())
    body = await read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        if not body:
            raise ApiError(400, "bad_request", "no image: send one as the request body, or several as multipart "
                                               "files")
        return [Upload(body)], request_options(fields)

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(Headers(scope=request.scope), stream(), max_files=settings.max_images,
                             max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):  # Starlette's words for max_files
            raise ApiError(413, "too_large", f"more than {settings.max_images} images in one request "
                                             "(--max-images)") from None
        raise ApiError(400, "bad_request", f"the multipart body cannot be read: {one_line(e.message)}") from None
    uploads = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(Upload(await value.read(), value.filename))
            else:
                fields.append((name, value))
    finally:
        await form.close()
    if not uploads:
        raise ApiError(400, "bad_request", "no image in the multipart body (images are parts with a filename)")
    return uploads, request_options(fields)


def answer(captions: list, scope: Optional[Scope] = None) -> JSONLineResponse:
    """200 with every image's object (what ``capkit caption --json`` prints, by the same function); 422
    (unreadable_image) when none could be captioned."""
    objects = [caption_object(caption) for caption in captions]
    if all(not caption.ok for caption in captions):
        return error_response(ApiError(422, "unreadable_image", captions[0].error or "unreadable image",
                                       extra={"captions": objects}), scope)
    return JSONLineResponse({"captions": objects})


async def caption_endpoint(request: Request) -> Response:
    service: CaptionService = request.app.state.service
    ticket = service.take_on()
    request.scope["capkit.ticket"] = ticket
    try:
        with anyio.fail_after(service.settings.timeout):
            try:
                uploads, given = await read_images(request, service)
            finally:
                ticket.stages["read"] = time.perf_counter() - ticket.arrived
            request.scope["capkit.images"] = len(uploads)
            captions = await service.caption(uploads, given, ticket)
    except TimeoutError:
        raise ApiError(504, "timeout", f"the request took longer than {service.settings.timeout:g} s "
                                       "(--timeout)") from None
    except DecodingOptionsError as e:  # request_options': an unknown option, or a value of the wrong kind
        raise ApiError(422, "invalid_option", one_line(e)) from None
    except ClientDisconnect:  # hung up while sending its body: the answer goes nowhere, but it is logged
        raise ApiError(400, "bad_request", "the client hung up before sending the whole body") from None
    finally:
        service.release(ticket)
    service.metrics.images.labels("ok").inc(sum(c.ok for c in captions))
    service.metrics.images.labels("error").inc(sum(not c.ok for c in captions))
    return answer(captions, request.scope)


async def healthz(request: Request) -> Response:
    return JSONLineResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    request.app.state.service.check_ready()
    return JSONLineResponse({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    content, media_type = request.app.state.service.metrics.exposition()
    return Response(content, media_type=media_type)


async def openapi_endpoint(request: Request) -> Response:
    return JSONLineResponse(openapi(request.app.state.service.settings))


async def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error, request.scope)


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
    return error_response(ApiError(error.status_code, kind, str(error.detail), headers=dict(error.headers or {})),
                          request.scope)


async def internal_error(request: Request, error: Exception) -> Response:
    """A bug: answered 500 in JSON (Starlette then logs its traceback)."""
    return error_response(ApiError(500, "internal", f"internal error ({type(error).__name__}): a bug in capkit"))


class AccessLog:
    """ASGI middleware: one line per request on ``stream`` (client, method, path, status, images, outcome,
    milliseconds) and the request metrics of /v1/captions (requests by outcome, time per stage)."""

    def __init__(self, app: ASGIApp, service: CaptionService, stream: Any = None) -> None:
        self.app, self.service, self.stream = app, service, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:  # an exception here is a bug, answered 500 by Starlette's outermost middleware
            outcome = scope.get("capkit.outcome", "ok" if status[0] < 400 else "internal")
            self.record(scope, status[0], outcome, time.perf_counter() - started)

    def record(self, scope: Scope, status: int, outcome: str, seconds: float) -> None:
        metrics = self.service.metrics
        if scope["path"] == "/v1/captions":
            metrics.requests.labels(outcome).inc()
            metrics.request_seconds.observe(seconds)
            ticket: Optional[Ticket] = scope.get("capkit.ticket")
            for stage, spent in (ticket.stages.items() if ticket else ()):
                metrics.stage_seconds.labels(stage).observe(spent)
        if self.stream is not None:
            client = scope.get("client") or ("-", 0)
            images = scope.get("capkit.images")
            print(f'{client[0]}:{client[1]} "{scope["method"]} {printable(scope["path"])[:200]}" {status} {outcome}'
                  f'{f" {images} images" if images is not None else ""} {seconds * 1000:.1f} ms', file=self.stream,
                  flush=True)


def caption_app(service: CaptionService, *, log: bool = True, web: Optional[ASGIApp] = None,
                on_failure: Optional[Callable[[str], None]] = None) -> Starlette:
    """The API over ``service``. ``log``: access lines on stderr. ``web``: an app to mount at /web/ (the page).
    The app's start-up starts loading the service (:meth:`CaptionService.start`; a no-op when it is loaded
    already); a failure to load calls ``on_failure`` with one line. Its shutdown closes the service."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start(on_failure or (lambda message: None))
        try:
            yield
        finally:
            service.close()

    routes = [Route("/v1/captions", caption_endpoint, methods=["POST"]), Route("/healthz", healthz),
              Route("/readyz", readyz), Route("/metrics", metrics_endpoint), Route("/openapi.json", openapi_endpoint)]
    if web is not None:
        routes.append(Mount("/web", app=web))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error})
    app.state.service = service
    app.add_middleware(AccessLog, service=service, stream=sys.stderr if log else None)
    return app


__all__ = ["answer", "caption_app", "read_body", "read_images"]
