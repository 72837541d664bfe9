"""`capkit data`: datasets. `capkit data synthetic` writes the built-in synthetic set (the folder on
stdout, its summary on stderr)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from capkit.cli.options import echo_json, json_option, status, user_errors
from capkit.training.synthetic import DEFAULT_COUNT, DEFAULT_IMAGE_SIZE


@click.group("data")
def data() -> None:
    """Datasets: generate the built-in synthetic one."""


@data.command("synthetic")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write [default: the cache folder that `capkit train` uses].")
@click.option("--count", type=click.IntRange(10), default=DEFAULT_COUNT, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=click.IntRange(32), default=DEFAULT_IMAGE_SIZE, show_default=True)
@json_option
def synthetic(out: Optional[Path], count: int, seed: int, image_size: int, as_json: bool) -> None:
    """Write the synthetic dataset: PNG images and COCO-format captions with train/val/test splits."""
    from capkit.training.data import synthetic_dir
    from capkit.training.datasets import describe, load_dataset
    from capkit.training.synthetic import generate_synthetic

    with user_errors():
        folder = generate_synthetic(out or synthetic_dir(count, seed, image_size), count=count, seed=seed,
                                    image_size=image_size)
        summary = describe(load_dataset(folder))
    echo_json({"path": str(folder), "summary": summary}) if as_json else click.echo(str(folder))
    status(summary)


__all__ = ["data"]
