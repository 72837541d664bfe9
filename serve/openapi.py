"""The API's OpenAPI 3.1 document (``GET /openapi.json``), derived from what the server really takes: the decoding
options from the fields of :class:`~capkit.runtime.decoding.DecodingOptions` (kind, range, help), the limits from
the server's :class:`~capkit.serve.settings.ServeSettings`, the errors from ``service.ERROR_TYPES``."""

from __future__ import annotations

from typing import Any

from capkit import __version__
from capkit.runtime.limits import DEFAULT_LIMITS
from capkit.serve.service import ERROR_TYPES
from capkit.serve.settings import OPTION_FIELDS, ServeSettings


def option_schema(name: str) -> dict[str, Any]:
    spec = OPTION_FIELDS[name].metadata
    schema: dict[str, Any] = {"type": "integer" if spec["kind"] is int else "number", "description": spec["help"]}
    if spec["minimum"] is not None:
        schema["minimum"] = spec["minimum"]
    if spec["above"] is not None:
        schema["exclusiveMinimum"] = spec["above"]
    if spec["maximum"] is not None:
        schema["maximum"] = spec["maximum"]
    if spec["limit"] is not None:
        schema["maximum"] = getattr(DEFAULT_LIMITS, spec["limit"])
    return schema


CAPTION = {
    "type": "object", "description": "One image's result, as `capkit caption --json` prints it: image, caption, "
    "tokens, logprob; or image and error when it could not be captioned.",
    "properties": {"image": {"type": ["string", "null"], "description": "the part's filename; null for a raw body"},
                   "caption": {"type": "string"}, "tokens": {"type": "array", "items": {"type": "integer"}},
                   "logprob": {"type": "number"}, "error": {"type": "string"}},
    "required": ["image"],
}
ERROR = {
    "type": "object", "required": ["error", "error_type"],
    "properties": {"error": {"type": "string", "description": "one line naming the problem"},
                   "error_type": {"type": "string", "enum": list(ERROR_TYPES)},
                   "captions": {"type": "array", "items": {"$ref": "#/components/schemas/Caption"},
                                "description": "unreadable_image only: every image's error"}},
}


def error_responses(*kinds: str) -> dict[str, Any]:
    by_status: dict[str, list[str]] = {}
    for kind in kinds:
        status, when = ERROR_TYPES[kind]
        by_status.setdefault(str(status), []).append(f"{kind}: {when}")
    return {status: {"description": "; ".join(whens), "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}} for status, whens in by_status.items()}


def openapi(settings: ServeSettings) -> dict[str, Any]:
    options = [{"name": name, "in": "query", "required": False, "schema": option_schema(name),
                "description": f"{option_schema(name)['description']} Default: the bundle's."} for name in OPTION_FIELDS]
    multipart = {"type": "object", "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "maxItems": settings.max_images,
                  "description": "the images: file parts (with a filename), under any field name"},
        **{name: option_schema(name) for name in OPTION_FIELDS}}}
    captions = {
        "summary": "Caption images",
        "description": f"One image as the raw body, or up to {settings.max_images} as multipart files; the body is "
                       f"at most {settings.max_body_bytes:,} bytes. Decoding options as query fields (or form fields "
                       "of a multipart body). Images are never fetched from URLs.",
        "parameters": options,
        "requestBody": {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": multipart}}},
        "responses": {"200": {"description": "every image's caption or error", "content": {"application/json": {
            "schema": {"type": "object", "required": ["captions"], "properties": {"captions": {
                "type": "array", "items": {"$ref": "#/components/schemas/Caption"}}}}}}},
            **error_responses("bad_request", "too_large", "invalid_option", "unreadable_image", "overloaded",
                              "not_ready", "draining", "timeout", "internal")},
    }
    probe = {"200": {"description": "yes"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "capkit serve", "version": __version__,
                 "description": "Image captioning with a capkit bundle. Errors: JSON {error, error_type}."},
        "paths": {
            "/v1/captions": {"post": captions},
            "/healthz": {"get": {"summary": "Alive", "responses": probe}},
            "/readyz": {"get": {"summary": "Model loaded and warmed up", "responses": {
                **probe, **error_responses("not_ready", "draining")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format)", "responses": probe}},
        },
        "components": {"schemas": {"Caption": CAPTION, "Error": ERROR}},
    }


__all__ = ["openapi", "option_schema"]
