"""`capkit caption`: a thin command over :class:`capkit.runtime.captioner.Captioner`.

Captions go to stdout (one line per image, or one JSON object per line with ``--json``); errors
go to stderr. An image that cannot be read is reported in its place and the others are still
captioned; the exit status is then 1. torch is imported only for ``--checkpoint``.
"""

from __future__ import annotations

from typing import Iterator, Optional

import click

from capkit.cli.options import (batch_size_option, checkpoint_option, decoding_option_group, device_option,
                                echo_json, json_option, model_option, open_captioner, pop_decoding, threads_option,
                                user_errors)
from capkit.runtime.captioner import DEFAULT_BATCH_SIZE, Caption
from capkit.runtime.decoding import check_given_options
from capkit.runtime.inputs import ImageInput, expand_inputs, printable


def in_input_order(inputs: list[ImageInput], captions: Iterator[Caption]) -> Iterator[Caption]:
    """One Caption per input: the captioner's for readable paths, an error Caption for the others."""
    for item in inputs:
        if item.error is None:
            yield next(captions)
        else:
            yield Caption(text="", tokens=(), logprob=None, image=item.label, error=item.error, finished=False)


def emit(result: Caption, as_json: bool, prefixed: bool) -> None:
    """Data on stdout (a line of text or of JSON), the error of a failed image on stderr.

    In text, a file name's control characters (a newline, a tab ...) and undecodable bytes are
    escaped (``\\n``, ``\\udcff``) so that one image is always one line; JSON carries the exact name."""
    if as_json:
        echo_json(result.to_dict())
    elif result.ok:
        click.echo(f"{printable(result.image or '')}: {result.text}" if prefixed else result.text)
    if not result.ok:
        click.echo(f"Error: {printable(' '.join((result.error or '').split()))}", err=True)


@click.command("caption")
@click.argument("images", nargs=-1, required=True)
@model_option
@checkpoint_option
@decoding_option_group
@device_option
@batch_size_option(DEFAULT_BATCH_SIZE)
@threads_option
@json_option
def caption(images: tuple[str, ...], model: Optional[str], checkpoint: Optional[str], device: str, batch_size: int,
            threads: Optional[int], as_json: bool, **options) -> None:
    """Caption images: files, folders (the images directly inside, sorted; not subfolders) or glob
    patterns (expanded by capkit, so quoting them works on every shell). With --checkpoint, the
    checkpoint's PyTorch model captions instead of a bundle (the reference; needs capkit[train]).

    \b
    capkit caption photo.jpg
    capkit caption photos/ "more/*.png" --json
    capkit caption photo.jpg --temp 0.7 --top-p 0.9 --seed 1
    """
    decoding = pop_decoding(options)
    with user_errors():
        check_given_options(**decoding)  # a bad option is reported before the model is loaded
        captioner = open_captioner(model, checkpoint, device, threads)
        captioner.options(**decoding)  # and with the model's defaults, before an image is read
        inputs = expand_inputs(images)
        paths = [item.path for item in inputs if item.error is None]
        captions = captioner.iter_captions(paths, **decoding, batch_size=batch_size) if paths else iter(())
        failed = 0
        for result in in_input_order(inputs, captions):
            emit(result, as_json, prefixed=len(inputs) > 1)
            failed += not result.ok
    if failed:
        raise click.exceptions.Exit(1)


__all__ = ["caption"]
