"""`capkit data`, `capkit train`, `capkit eval`: thin commands over capkit.training (torch imported inside)."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Datasets: generate the built-in synthetic one."""


@click.command()
def train() -> None:
    """Train a captioning model."""
    raise click.ClickException("not implemented yet")


@click.command("eval")
def eval_command() -> None:
    """BLEU-1..4 and CIDEr on a split."""
    raise click.ClickException("not implemented yet")
