"""What ``capkit serve`` may be asked and how much it takes on: :class:`ServeSettings` (each field a command-line
option of ``capkit serve``, its default here only), and the decoding options of a request, read from query or form
fields named as the fields of :class:`~capkit.runtime.decoding.DecodingOptions` (never listed again here).

Imports neither Starlette nor uvicorn: the command reads these before it checks the ``serve`` extra.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from capkit.runtime.decoding import DecodingOptions, DecodingOptionsError
from capkit.runtime.errors import CapkitError, check_int

BATCHING = ("step", "request", "none")  # see capkit.serve.batching


def setting(default: Any, help: str, **bounds: Any) -> Any:
    """A :class:`ServeSettings` field: its default, the command-line help, and its range (``minimum``, ``maximum``,
    ``choices``), checked by :meth:`ServeSettings.checked`."""
    return field(default=default, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class ServeSettings:
    """The service's limits and batching. Every bound here is what keeps a server's memory and latency finite
    whatever its clients send: memory is at most about ``max_queue`` requests of ``max_body_mb`` each (plus
    one decoded image per preprocessing thread, bounded by the runtime's Limits)."""

    max_body_mb: float = setting(20.0, "Largest request body, in MB (413 past it).", minimum=0.001, maximum=4096)
    max_images: int = setting(16, "Most images in one request (413 past it).", minimum=1, maximum=1024)
    max_queue: int = setting(64, "Requests taken on at once: reading, waiting or being captioned (429 with "
                                 "Retry-After past it).", minimum=1, maximum=100_000)
    timeout: float = setting(30.0, "Seconds a request may take from its arrival to its answer (504 past it).",
                             minimum=0.001, maximum=86_400)
    batching: str = setting("request", "request: requests waiting together are captioned together, in one decode "
                                       "loop (the fastest here: docs/serve.md); step: a request joins the running "
                                       "batch between decoding steps; none: one at a time.",
                            choices=BATCHING)
    max_batch: int = setting(32, "Most images (beams count each) decoded together.", minimum=1, maximum=1024)
    max_wait_ms: float = setting(5.0, "How long an idle server waits for more requests to batch with one that "
                                      "arrived, when others are on their way.", minimum=0, maximum=10_000)
    preprocess_threads: int = setting(2, "Threads that read and preprocess images.", minimum=1, maximum=256)
    drain: float = setting(30.0, "On SIGTERM: seconds the requests already taken on get to finish (new ones are "
                                 "answered 503).", minimum=0, maximum=86_400)
    max_connections: int = setting(1024, "Open connections at once (uvicorn answers 503 past it).", minimum=1,
                                   maximum=1_000_000)
    retry_after: int = setting(1, "The Retry-After of a 429, in seconds.", minimum=0, maximum=3600)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def checked(self) -> "ServeSettings":
        """Each field checked against its declared range; CapkitError naming the setting."""
        values = {}
        for f in dataclasses.fields(self):
            value, spec, label = getattr(self, f.name), f.metadata, f.name.replace("_", "-")
            if "choices" in spec:
                if value not in spec["choices"]:
                    raise CapkitError(f"{label} must be one of {', '.join(spec['choices'])}, got {value!r}")
            elif isinstance(f.default, int):
                value = check_int(value, label, spec["minimum"], spec["maximum"])
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not spec["minimum"] <= value <= spec["maximum"]:
                raise CapkitError(f"{label} must be a number from {spec['minimum']:g} to {spec['maximum']:g}, "
                                  f"got {value!r}")
            values[f.name] = value
        return ServeSettings(**values)


# -- a request's decoding options -------------------------------------------------------------------------------
OPTION_FIELDS = {f.name: f for f in dataclasses.fields(DecodingOptions)}
MAX_OPTION_CHARS = 400  # longer than any number an option takes (10**330 has 331 digits), short enough to echo


def parse_value(name: str, text: str) -> Any:
    """One option's text as its field's kind (int or float); DecodingOptionsError in verify_options' words when it
    is not one. Ranges are verify_options' to check, once, with the bundle's defaults."""
    kind = OPTION_FIELDS[name].metadata["kind"]
    label = name.replace("_", "-")
    shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
    if len(text) > MAX_OPTION_CHARS:
        raise DecodingOptionsError(f"{label} is {len(text)} characters long, more than any value it takes")
    try:
        return int(text.strip()) if kind is int else float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise DecodingOptionsError(f"{label} must be {what}, got {shown!r}") from None


def request_options(fields: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The decoding options a request gives (query or form fields: name, text) as keyword overrides for
    ``Captioner.options``. DecodingOptionsError, one line, for an unknown name, a name given twice or a value that
    is not of the option's kind."""
    given: dict[str, Any] = {}
    for name, text in fields:
        if name not in OPTION_FIELDS:
            known = ", ".join(OPTION_FIELDS)
            raise DecodingOptionsError(f"unknown option {name[:40]!r} (the options are {known}; images go in the body "
                                       "or as multipart files, parts with a filename)")
        if name in given:
            raise DecodingOptionsError(f"option {name} is given twice")
        given[name] = parse_value(name, text)
    return given


__all__ = ["BATCHING", "OPTION_FIELDS", "ServeSettings", "parse_value", "request_options", "setting"]
