"""`capkit caption`: a thin command over :class:`capkit.runtime.captioner.Captioner`.

Captions go to stdout (one line per image, or one JSON object per line with ``--json``);
errors go to stderr. An image that cannot be read is reported and skipped, and the exit
status is then 1. torch is imported only for ``--checkpoint``.
"""

from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import click

from capkit.cli_options import decoding_options, device_option, echo_json, json_option, status, user_errors
from capkit.runtime.bundle import DEFAULT_BUNDLE, MODEL_ENV
from capkit.runtime.captioner import Caption, Captioner, check_batch_size
from capkit.runtime.captioner import decoding_options as check_decoding_options
from capkit.runtime.errors import CapkitError

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Input:
    """One image named on the command line: a path, or the reason there is none."""

    label: str  # what the output calls it: the argument, or folder/name for a folder's images
    path: Optional[str] = None
    error: Optional[str] = None


def image_extensions() -> frozenset[str]:
    """File extensions Pillow can open (.jpg, .png, .webp, ...), lower case."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def folder_images(folder: str) -> list[str]:
    """The image files directly inside ``folder`` (not its subfolders), sorted by name; hidden files skipped."""
    extensions = image_extensions()
    names = sorted(entry.name for entry in os.scandir(folder)
                   if entry.is_file() and not entry.name.startswith(".") and Path(entry.name).suffix.lower() in extensions)
    return [os.path.join(folder, name) for name in names]


def expand_inputs(arguments: Sequence[str]) -> list[Input]:
    """Files as given; folders: the images inside, sorted (not recursive); glob patterns (``*``, ``?``,
    ``[...]``, ``**``) expanded here, sorted, so that they work where the shell does not expand them."""
    inputs: list[Input] = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = folder_images(argument)
            inputs += [Input(p, p) for p in found] or [Input(argument, error=f"{argument}: no images in this folder")]
        elif os.path.exists(argument):
            inputs.append(Input(argument, argument))
        elif GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            files = [m for m in matches if os.path.isfile(m)] + [p for m in matches if os.path.isdir(m)
                                                                  for p in folder_images(m)]
            inputs += [Input(p, p) for p in files] or [Input(argument, error=f"{argument}: no file matches")]
        else:
            inputs.append(Input(argument, error=f"{argument}: no such file"))
    return inputs


def checkpoint_captioner(checkpoint: str, device: str, threads: Optional[int]) -> Captioner:
    """The PyTorch model of a checkpoint (a .pt file or a run folder) behind the same Captioner:
    same preprocessing, same decoding loop; only the Inference differs. Needs the train extra."""
    try:
        import torch

        from capkit.training.checkpoint import load_model
        from capkit.training.torch_inference import TorchInference
    except ImportError as e:
        raise CapkitError(f"--checkpoint needs PyTorch; install capkit[train] ({e})") from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise CapkitError("--device cuda: PyTorch sees no CUDA device")
    if threads is not None:
        torch.set_num_threads(threads)
    model, vocab, spec, payload = load_model(checkpoint, device=device)
    return Captioner.from_inference(TorchInference(model, device), vocab, spec, int(payload["max_length"]))


def open_captioner(model: Optional[str], checkpoint: Optional[str], device: str, threads: Optional[int]) -> Captioner:
    if checkpoint is not None:
        if model is not None:
            raise CapkitError("give --model or --checkpoint, not both")
        return checkpoint_captioner(checkpoint, device, threads)
    return Captioner(model, device=device, threads=threads)  # None: $CAPKIT_MODEL, else runs/latest/bundle


def opened_quietly(model: Optional[str], checkpoint: Optional[str], device: str, threads: Optional[int]) -> Captioner:
    """:func:`open_captioner` with its warnings (e.g. "CUDA is not usable, running on the CPU") as one status line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captioner = open_captioner(model, checkpoint, device, threads)
    for warning in caught:
        status(f"Warning: {(str(warning.message).strip().splitlines() or [''])[0]}")
    return captioner


def in_input_order(inputs: list[Input], captions: Iterator[Caption]) -> Iterator[Caption]:
    """One Caption per input: the captioner's for readable paths, an error Caption for the others."""
    for item in inputs:
        if item.error is None:
            yield next(captions)
        else:
            yield Caption(text="", tokens=(), logprob=None, image=item.label, error=item.error, finished=False)


def emit(result: Caption, as_json: bool, prefixed: bool) -> None:
    """Data on stdout (a line of text or of JSON), the error of a failed image on stderr."""
    if as_json:
        echo_json(result.to_dict())
    elif result.ok:
        click.echo(f"{result.image}: {result.text}" if prefixed else result.text)
    if not result.ok:
        click.echo(f"Error: {result.error}", err=True)


@click.command("caption")
@click.argument("images", nargs=-1, required=True)
@click.option("--model", default=None, metavar="BUNDLE",
              help=f"Bundle folder [default: ${MODEL_ENV}, else {DEFAULT_BUNDLE}].")
@click.option("--checkpoint", default=None, metavar="RUN_OR_PT",
              help="Caption with a checkpoint's PyTorch model instead of a bundle (a .pt file or a run folder; "
                   "needs capkit[train]).")
@decoding_options
@device_option
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images decoded together.")
@click.option("--threads", type=int, default=None, help="CPU threads [default: ONNX Runtime's choice].")
@json_option
def caption(images: tuple[str, ...], model: Optional[str], checkpoint: Optional[str], temperature: float,
            top_k: Optional[int], top_p: Optional[float], beam_size: int, max_length: Optional[int],
            seed: Optional[int], device: str, batch_size: int, threads: Optional[int], as_json: bool) -> None:
    """Caption images: files, folders (the images directly inside, sorted; not subfolders) or glob
    patterns (expanded by capkit, so quoting them works on every shell).

    \b
    capkit caption photo.jpg
    capkit caption photos/ "more/*.png" --json
    capkit caption photo.jpg --temp 0.7 --top-p 0.9 --seed 1
    """
    decoding = (temperature, top_k, top_p, beam_size, max_length, seed)
    with user_errors():
        check_decoding_options(*decoding)  # every option is checked before anything is read
        check_batch_size(batch_size)
        if threads is not None and threads < 1:
            raise CapkitError(f"threads must be >= 1, got {threads}")
        inputs = expand_inputs(images)
        paths = [item.path for item in inputs if item.error is None]
        captions = opened_quietly(model, checkpoint, device, threads).iter_captions(
            paths, *decoding, batch_size=batch_size) if paths else iter(())
        failed = 0
        for result in in_input_order(inputs, captions):
            emit(result, as_json, prefixed=len(inputs) > 1)
            failed += not result.ok
    if failed:
        raise click.exceptions.Exit(1)
