"""The ``capkit`` command: a thin layer over library functions; each stage adds its commands."""

from __future__ import annotations

import click

from capkit import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capkit")
def main() -> None:
    """Train an image captioner, export it to ONNX, caption images with a torch-free runtime.

    \b
    Demo:  capkit data synthetic && capkit train && capkit export && capkit caption IMG --temp 0.1
    """


def _register() -> None:
    # Each stage's commands live with the stage (bench, over the runtime and training, beside this file);
    # their modules import torch only inside commands.
    from capkit.bench_cli import bench
    from capkit.export.cli import export
    from capkit.runtime.cli import caption
    from capkit.training.cli import data, eval_command, train

    for command in (data, train, eval_command, export, caption, bench):
        main.add_command(command)


_register()
