"""Training, evaluation and the PyTorch reference (the ``train`` extra). Modules import torch
themselves; importing this package does not."""

import sys


def log_to_stderr(message: str) -> None:
    """The library's default ``status`` callback: status goes to stderr, never to stdout (which carries data)."""
    print(message, file=sys.stderr)
