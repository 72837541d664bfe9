"""Option groups and error handling shared by every ``capkit`` command."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any, Callable, Iterator

import click

from capkit.runtime.errors import CapkitError

# Errors that mean "bad input": shown as one line, exit status 1, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CapkitError, FileNotFoundError, PermissionError, IsADirectoryError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns the library's input errors into ``click.ClickException`` (one line, exit 1)."""
    try:
        yield
    except click.ClickException:
        raise
    except USER_ERRORS as e:
        message = str(e).strip().splitlines()
        raise click.ClickException(message[0] if message else type(e).__name__) from None


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of text.")(f)


def device_option(f: Callable) -> Callable:
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="Where to run: CUDA when it really works (auto), or force one.")(f)


def decoding_options(f: Callable) -> Callable:
    """--temp/--top-k/--top-p/--beam/--max-length/--seed; range checks happen once, in the decoder."""
    options = [
        click.option("--temp", "temperature", type=float, default=0.0, show_default=True,
                     help="0 = greedy (argmax); > 0 samples from softmax(logits / T)."),
        click.option("--top-k", type=int, default=None, help="Sample among the K most likely words."),
        click.option("--top-p", type=float, default=None, help="Sample from the smallest set of words of mass P."),
        click.option("--beam", "beam_size", type=int, default=1, show_default=True, help="Beam width (1 = no beam search)."),
        click.option("--max-length", type=int, default=None, help="Longest caption in tokens [default: the model's]."),
        click.option("--seed", type=int, default=None, help="Seed for sampling: the same seed gives the same caption."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data))


def status(message: str) -> None:
    """Status and progress go to stderr; stdout carries data only."""
    click.echo(message, err=True)


def wraps_command(f: Callable) -> Callable:
    """Runs the command body inside :func:`user_errors`."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return f(*args, **kwargs)

    return wrapper
