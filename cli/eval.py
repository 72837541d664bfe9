"""`capkit eval`: a thin command over :func:`capkit.training.evaluate.evaluate` (BLEU-1..4, CIDEr).

With several references an image, a last row (``ceiling`` in ``--json``) scores the references
themselves, each against the others, so a weak model can be told from a hard dataset.

The table (or ``--json``) goes to stdout, progress to stderr. A bundle (``--model``) or a
checkpoint (``--checkpoint``, the default: runs/latest) is evaluated through the same Captioner
and decoding options as ``capkit caption``.
"""

from __future__ import annotations

import os
from typing import Optional

import click

from capkit.cli.options import (batch_size_option, checkpoint_option, decoding_option_group, device_option,
                                echo_json, json_option, model_option, open_captioner, pop_decoding, progress_option,
                                status, threads_option, user_errors)
from capkit.runtime.decoding import check_given_options
from capkit.runtime.errors import CapkitError

EVAL_SEED = 0  # sampled captions are seeded unless --seed says otherwise, so the figures reproduce


def parse_temperatures(value: Optional[str]) -> Optional[list[float]]:
    if value is None:
        return None
    try:
        temperatures = [float(t) for t in value.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers", param_hint="--temps") from None
    if not temperatures:
        raise click.BadParameter("give at least one temperature", param_hint="--temps")
    return temperatures


@click.command("eval")
@model_option
@checkpoint_option
@click.option("--data", default=None, help="Dataset [default: the one a checkpoint was trained on; required with --model].")
@click.option("--image-dir", default=None, help="Image folder, for sources that need one.")
@click.option("--split", default="test", show_default=True)
@click.option("--temps", default=None, metavar="T1,T2,...",
              help="A sweep: one row per temperature, e.g. 0,0.1,0.2,0.7,1,1.5,2 [default: --temp alone].")
@decoding_option_group
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate the first N images only.")
@batch_size_option
@device_option
@threads_option
@progress_option
@json_option
def eval_command(model: Optional[str], checkpoint: Optional[str], data: Optional[str], image_dir: Optional[str],
                 split: str, temps: Optional[str], limit: Optional[int], batch_size: int, device: str,
                 threads: Optional[int], progress: bool, as_json: bool, **options) -> None:
    """BLEU-1..4 and CIDEr on a split, per temperature (the seed report's Table 2 with --temps), of a
    checkpoint (default: runs/latest) or, with --model, a bundle; on synthetic data also fact accuracy: the
    share of captions that state the scene the generator recorded exactly right, and each kind of fact."""
    decoding = pop_decoding(options)
    temperature, sweep = decoding.pop("temperature"), parse_temperatures(temps)
    if sweep is not None and temperature is not None:
        raise click.UsageError("give --temp or --temps, not both")
    temperatures = sweep or [temperature]
    decoding["seed"] = EVAL_SEED if decoding["seed"] is None else decoding["seed"]
    with user_errors():
        from capkit.training.datasets import load_dataset
        from capkit.training.evaluate import FACTS_LEGEND, evaluate, format_table
        from capkit.training.synthetic import fact_check

        for t in temperatures:
            check_given_options(temperature=t, **decoding)  # before the model and the data are loaded
        captioner = open_captioner(model, checkpoint, device, threads, default="checkpoint")
        source = data or getattr(captioner.inference, "data_source", None)  # a bundle's records are never opened
        if not source:
            raise CapkitError("which dataset? pass --data (a bundle does not say where to find its data)")
        splits = load_dataset(source, image_dir)
        if not splits.get(split):
            raise CapkitError(f"{source}: split {split!r} is empty or missing")
        facts = fact_check(source, split) if os.path.isdir(source) else None  # synthetic data: its scenes
        results = evaluate(captioner, splits[split], temperatures, limit=limit, progress=progress, status=status,
                           batch_size=batch_size, facts=facts, **decoding)
    status(f"{results[0].images} {split} images of {source}")
    if results[0].facts is not None:
        status(FACTS_LEGEND)
    if as_json:
        echo_json({"split": split, "data": source, "results": [r.to_dict() for r in results],
                   "ceiling": results.ceiling})
    else:
        click.echo(format_table(results))


__all__ = ["eval_command"]
