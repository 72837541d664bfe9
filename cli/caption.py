"""`capkit caption`: a thin command over :class:`capkit.runtime.captioner.Captioner`.

Captions go to stdout (one line per image, or one JSON object per line with ``--json``); errors
go to stderr. An image that cannot be read is reported in its place and the others are still
captioned; the exit status is then 1. torch is imported only for ``--checkpoint``.
"""

from __future__ import annotations

from typing import Iterator, Optional

import click

from capkit.cli.options import (batch_size_option, checkpoint_option, decoding_option_group, device_option,
                                echo_json, json_option, model_option, open_captioner, pop_decoding, status,
                                threads_option, user_errors)
from capkit.bulk.listing import ImageInput, expand_inputs
from capkit.bulk.local import SKIP_BY, error_caption, run_bulk
from capkit.bulk.output import caption_object
from capkit.runtime.captioner import Caption
from capkit.runtime.decoding import check_given_options
from capkit.runtime.errors import one_line, printable


def in_input_order(inputs: list[ImageInput], captions: Iterator[Caption]) -> Iterator[Caption]:
    """One Caption per input: the captioner's for readable paths, an error Caption for the others."""
    for item in inputs:
        if item.error is None:
            yield next(captions)
        else:
            yield error_caption(item)


def emit(result: Caption, as_json: bool, prefixed: bool) -> None:
    """Data on stdout (a line of text or of JSON), the error of a failed image on stderr.

    In text, a file name's control characters (a newline, a tab ...) and undecodable bytes are
    escaped (``\\n``, ``\\udcff``) so that one image is always one line; JSON carries the exact name (one
    that is not UTF-8 in ``image_bytes``, as bulk output files do)."""
    if as_json:
        echo_json(caption_object(result))
    elif result.ok:
        click.echo(f"{printable(result.image or '')}: {result.text}" if prefixed else result.text)
    if not result.ok:
        click.echo(f"Error: {printable(one_line(result.error or ''))}", err=True)


@click.command("caption")
@click.argument("images", nargs=-1, required=True)
@model_option
@checkpoint_option
@decoding_option_group
@device_option
@batch_size_option
@threads_option
@json_option
@click.option("--out", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Bulk run: append one JSON line per image to FILE (captions.jsonl), resuming where a previous run "
                   "stopped; SOURCE may also be a listing (.txt/.lst of paths, .jsonl or .csv with image/path).")
@click.option("--readers", type=click.IntRange(0, 64), default=None,
              help="Bulk run: threads that read and preprocess images while the model runs (0: none) [default: 2].")
@click.option("--skip-by", type=click.Choice(SKIP_BY), default=None,
              help="Bulk run: skip images already in --out by path, or also by content sha256 [default: path].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Bulk run on a Ray cluster at ADDRESS (ray start --head prints it; 'auto' finds a running one), or "
                   "on a local one with --ray alone. Needs capkit[ray].")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="With --ray: captioner actors, one model each [default: 2].")
def caption(images: tuple[str, ...], model: Optional[str], checkpoint: Optional[str], device: str, batch_size: int,
            threads: Optional[int], as_json: bool, out: Optional[str], readers: Optional[int], skip_by: Optional[str],
            ray_address: Optional[str], workers: Optional[int], **options) -> None:
    """Caption images: files, folders (the images directly inside, sorted; not subfolders) or glob
    patterns (expanded by capkit, so quoting them works on every shell). With --checkpoint, the
    checkpoint's PyTorch model captions instead of a bundle (the reference; needs capkit[train]).

    With --out, a bulk run: listings are read lazily, reading overlaps inference, lines are flushed
    in small groups, and rerunning the same command resumes (see README, "Captioning a collection").

    \b
    capkit caption photo.jpg
    capkit caption photos/ "more/*.png" --json
    capkit caption photo.jpg --temp 0.7 --top-p 0.9 --seed 1
    capkit caption photos/ paths.txt --out captions.jsonl
    """
    decoding = pop_decoding(options)
    if out is None:
        for name, value in (("--readers", readers), ("--skip-by", skip_by), ("--ray", ray_address),
                            ("--workers", workers)):
            if value is not None:
                raise click.UsageError(f"{name} is for bulk runs: give --out FILE too")
    else:
        bulk(images, out, model=model, checkpoint=checkpoint, device=device, batch_size=batch_size, threads=threads,
             readers=2 if readers is None else readers, skip_by=skip_by or "path", ray_address=ray_address,
             workers=workers, decoding=decoding)
        return
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


def bulk(sources: tuple[str, ...], out: str, *, model: Optional[str], checkpoint: Optional[str], device: str,
         batch_size: int, threads: Optional[int], readers: int, skip_by: str, ray_address: Optional[str],
         workers: Optional[int], decoding: dict) -> None:
    """``--out``: the bulk run (capkit.bulk.local), or on Ray (capkit.bulk.ray); a one-line summary on stderr, exit 1
    when an image failed, 130 when interrupted."""
    with user_errors():
        check_given_options(**decoding)
        if ray_address is not None:
            if checkpoint is not None:
                raise click.UsageError("--ray captions with a bundle (--model), not --checkpoint")
            if skip_by != "path":
                raise click.UsageError("--ray resumes by path only (--skip-by hash is for runs on one machine)")
            from capkit.bulk.ray import run_on_ray

            summary = run_on_ray(sources, out, model, address=ray_address, workers=workers or 2,
                                 batch_size=batch_size, threads=threads, status=status, **decoding)
        else:
            if out.lower().endswith(".parquet"):
                raise click.UsageError("Parquet output is written by --ray runs; give a .jsonl file")
            if workers is not None:
                raise click.UsageError("--workers is for --ray runs")
            captioner = open_captioner(model, checkpoint, device, threads)
            options = captioner.options(**decoding)
            summary = run_bulk(captioner, sources, out, readers=readers, batch_size=batch_size, skip_by=skip_by,
                               options=options, status=status)
    status(summary.line())
    if summary.interrupted:
        status(f"Interrupted: rerun the same command to resume (the lines written to {printable(out)} are kept)")
        raise click.exceptions.Exit(130)
    if summary.failed:
        raise click.exceptions.Exit(1)


__all__ = ["bulk", "caption"]
