"""The ``capkit`` command: one module per command, each a few lines over a library function.

Commands import torch (and ONNX Runtime) inside their bodies only, so that ``capkit --help`` and
``capkit caption`` never load PyTorch. Shared options and error handling: :mod:`capkit.cli.options`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from capkit import __version__
from capkit.cli.bench import bench
from capkit.cli.caption import caption
from capkit.cli.data import data
from capkit.cli.eval import eval_command
from capkit.cli.export import export
from capkit.runtime.errors import first_line
from capkit.cli.train import train
from capkit.cli.serve_web import serve_web  # the on-device captioning page (clients/web)
from capkit.cli.serve import serve  # the HTTP captioning service

DEBUG_ENV = "CAPKIT_DEBUG"  # set to 1: an unexpected error shows its traceback instead of one line
UNEXPECTED_EXIT = 70  # EX_SOFTWARE: the last-resort guard was reached, i.e. a check is missing in capkit


class CapkitGroup(click.Group):
    """Every error is one line on stderr: click's usage errors (without the usage text), the
    library's input errors (``click.ClickException``), and, as a last resort, any unexpected
    exception (exit status UNEXPECTED_EXIT, with a hint to rerun with ``CAPKIT_DEBUG=1``). The
    tests run with ``CAPKIT_DEBUG=1``, so reaching the last resort fails them instead of hiding a
    missing check."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            click.echo(f"Error: {e.format_message()} (see --help)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except Exception as e:  # the last resort: a bug, not bad input
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(f"Error: unexpected {type(e).__name__}: {first_line(e)} (a bug in capkit; rerun with "
                       f"{DEBUG_ENV}=1 for the traceback)", err=True)
            sys.exit(UNEXPECTED_EXIT)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=CapkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capkit")
def main() -> None:
    """Train an image captioner, export it to ONNX, caption images with a torch-free runtime.

    \b
    Demo:  capkit data synthetic && capkit train && capkit export && capkit caption IMG --temp 0.1
    """


for _command in (data, train, eval_command, export, caption, bench):
    main.add_command(_command)
main.add_command(serve_web)
main.add_command(serve)

__all__ = ["DEBUG_ENV", "UNEXPECTED_EXIT", "CapkitGroup", "main"]
