"""`capkit data`: datasets. `capkit data synthetic` writes a built-in synthetic set (the folder on
stdout, its summary on stderr): the demo family "shapes" or the second family "objects"."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from capkit.cli.options import echo_json, json_option, status, user_errors
from capkit.training.synthetic import SHAPES_FAMILY, families

FAMILIES = families()


def _per_family(attribute: str) -> str:
    """"4800 shapes, 3000 objects": a per-family default for the help text."""
    return ", ".join(f"{getattr(f, attribute)} {name}" for name, f in FAMILIES.items())


@click.group("data")
def data() -> None:
    """Datasets: generate the built-in synthetic ones."""


@data.command("synthetic")
@click.option("--family", type=click.Choice(list(FAMILIES)), default=SHAPES_FAMILY.name, show_default=True,
              help="Which synthetic set: the demo's flat shapes (PNG), or objects on patterned backdrops (JPEG), "
                   "a second set for checking a recipe on data it was not tuned on.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write [default: the family's cache folder; for shapes the one `capkit train` uses].")
@click.option("--count", type=click.IntRange(10), default=None,
              help=f"Number of images [default: {_per_family('default_count')}].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=click.IntRange(32), default=None,
              help=f"Image side in pixels [default: {_per_family('default_image_size')}].")
@json_option
def synthetic(family: str, out: Optional[Path], count: Optional[int], seed: int, image_size: Optional[int],
              as_json: bool) -> None:
    """Write a synthetic dataset: images and COCO-format captions with train/val/test splits."""
    from capkit.training.data import synthetic_dir
    from capkit.training.datasets import describe, load_dataset

    chosen = FAMILIES[family]
    count = chosen.default_count if count is None else count
    image_size = chosen.default_image_size if image_size is None else image_size
    with user_errors():
        folder = chosen.generate(out or synthetic_dir(count, seed, image_size, chosen.cache_tag), count=count,
                                 seed=seed, image_size=image_size)
        summary = describe(load_dataset(folder))
    echo_json({"path": str(folder), "summary": summary}) if as_json else click.echo(str(folder))
    status(summary)


__all__ = ["data"]
