"""Option groups, output and error handling shared by every ``capkit`` command.

One spelling per thing, in every command that takes it: ``--model BUNDLE``, ``--checkpoint
RUN_OR_PT``, ``--device``, ``--threads``, ``--batch-size``, ``--json``, and the decoding group
(``--temp``, ``--top-k``, ``--top-p``, ``--beam``, ``--max-length``, ``--seed``), whose options
default to the bundle's own (its manifest's ``decoding`` block). Data goes to stdout, status to
stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any, Callable, Iterator, Optional

import click

from capkit.runtime.bundle import DEFAULT_BUNDLE, MODEL_ENV
from capkit.runtime.captioner import DEFAULT_BATCH_SIZE
from capkit.runtime.decoding import OPTION_NAMES, DecodingOptions
from capkit.runtime.errors import CapkitError, first_line
from capkit.runtime.limits import DEFAULT_LIMITS

# Errors that mean "bad input": shown as one line, exit status 1, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CapkitError, FileNotFoundError, PermissionError, IsADirectoryError,
                                                NotADirectoryError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns the library's input errors into ``click.ClickException`` (one line, exit 1)."""
    try:
        yield
    except click.ClickException:
        raise
    except USER_ERRORS as e:
        raise click.ClickException(first_line(e)) from None


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data))


def status(message: str) -> None:
    """Status and progress go to stderr; stdout carries data only."""
    click.echo(message, err=True)


def _options(*options: Callable) -> Callable[[Callable], Callable]:
    def decorate(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of text.")

model_option = click.option("--model", default=None, metavar="BUNDLE",
                            help=f"Bundle folder [default: ${MODEL_ENV}, else {DEFAULT_BUNDLE}].")

checkpoint_option = click.option("--checkpoint", default=None, metavar="RUN_OR_PT",
                                 help="Checkpoint: a .pt file or a run folder (its best.pt) [default: runs/latest].")

# capkit.runtime.providers.DEVICES (tests/test_providers.py checks they agree), written out: importing it would load
# ONNX Runtime for every command, --help included
DEVICE_CHOICES = ("auto", "cpu", "cuda", "openvino")
device_option = click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
                             help="Where to run: CUDA when it really works (auto), or force one (openvino: the "
                                  "encoder on ONNX Runtime's OpenVINO provider, for onnxruntime-openvino).")

threads_option = click.option("--threads", type=click.IntRange(1, DEFAULT_LIMITS.max_threads), default=None,
                              help="CPU threads per graph [default: one per core].")

progress_option = click.option("--progress/--no-progress", default=True, show_default=True,
                               help="Progress bars on stderr.")


batch_size_option = click.option("--batch-size", type=click.IntRange(1, DEFAULT_LIMITS.max_batch_size),
                                 default=DEFAULT_BATCH_SIZE, show_default=True, help="Images decoded together.")


def images_option(help: str) -> Callable[[Callable], Callable]:
    """``--images`` (repeatable): image files, folders or glob patterns."""
    return click.option("--images", "images", multiple=True, metavar="PATH", help=help)


def _decoding_option(f: dataclasses.Field) -> Callable[[Callable], Callable]:
    """The CLI option of one DecodingOptions field: its flag, type and help from the field; default None,
    meaning the bundle's (or model's) own."""
    spec = f.metadata
    default = "the bundle's" + (f", {f.default:g}" if f.default is not None else ", none")
    return click.option(spec["flag"], f.name, type=spec["kind"], default=None, help=f"{spec['help']} [default: {default}].")


decoding_option_group = _options(*(_decoding_option(f) for f in dataclasses.fields(DecodingOptions)))
"""The decoding options, one per field of :class:`~capkit.runtime.decoding.DecodingOptions`; each defaults
to None, meaning the bundle's (or model's) own. Values are checked once, by the runtime's ``verify_options``,
so the ranges live in one place."""


def pop_decoding(options: dict[str, Any]) -> dict[str, Optional[Any]]:
    """The decoding group's values out of a command's keyword arguments (those the user left out are None)."""
    return {name: options.pop(name) for name in OPTION_NAMES}


# -- options whose defaults come from a configuration dataclass (never restated here) ----------------------------
def field_default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def config_option(cls: type, name: str, *flags: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """``click.option`` for field ``name`` of ``cls``: flag ``--name-with-dashes`` unless ``flags`` are given,
    default and shown default from the dataclass."""
    default = field_default(cls, name)
    flags = flags or (f"--{name.replace('_', '-')}",)
    kwargs.setdefault("show_default", default is not None and not kwargs.get("is_flag"))
    return click.option(*flags, name, default=default, **kwargs)


__all__ = ["USER_ERRORS", "batch_size_option", "checkpoint_option", "config_option",
           "decoding_option_group", "field_default",
           "open_captioner",
           "device_option", "echo_json", "images_option", "json_option", "model_option",
           "pop_decoding", "progress_option", "status", "threads_option", "user_errors"]


def open_captioner(model: Optional[str], checkpoint: Optional[str], device: str, threads: Optional[int],
                   default: str = "bundle"):
    """The Captioner a command runs: a bundle (``--model``) or a checkpoint's PyTorch model
    (``--checkpoint``, needs capkit[train]); with neither, ``default``: "bundle" (``$CAPKIT_MODEL``
    or runs/latest/bundle, as ``capkit caption``) or "checkpoint" (runs/latest, as ``capkit eval``).
    The runtime's warnings (e.g. "CUDA is not usable, running on the CPU") become one status line each."""
    import warnings

    from capkit.runtime.captioner import Captioner

    if model is not None and checkpoint is not None:
        raise CapkitError("give --model or --checkpoint, not both")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if model is not None or (checkpoint is None and default == "bundle"):
            captioner = Captioner(model, device=device, threads=threads)
        else:
            try:
                from capkit.training.torch_inference import checkpoint_captioner
            except ImportError as e:
                raise CapkitError(f"--checkpoint needs PyTorch; install capkit[train] ({e})") from None
            captioner = checkpoint_captioner(checkpoint, device, threads)
    for warning in caught:
        status(f"Warning: {first_line(warning.message)}")
    return captioner
