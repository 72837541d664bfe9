"""`capkit export`: a thin command over :func:`capkit.export.onnx_export.export_checkpoint`.

The bundle folder goes to stdout (or, with ``--json``, the whole report as one JSON object); the
report goes to stderr. The exit status is 1 when the parity check or an ORT-format check fails
(or on a bad input).
torch is imported inside the command only.
"""

from __future__ import annotations

from typing import Optional

import click

from capkit.export import DEFAULT_OPSET, MIN_OPSET
from capkit.export.ort_format import ORT_PLATFORMS
from capkit.runtime.manifest import RECURRENT_CELLS
from capkit.cli.options import checkpoint_option, echo_json, images_option, json_option, status, user_errors



@click.command("export")
@checkpoint_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Bundle folder [default: <run folder>/bundle, so runs/latest/bundle for the newest run].")
@click.option("--opset", type=click.IntRange(MIN_OPSET), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, from {MIN_OPSET} to the newest that the installed torch and onnx both export.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Check the graphs and their parity with PyTorch (greedy and seeded sampling).")
@click.option("--quantize", type=click.Choice(["int8", "none"]), default=None,
              help="Also write an int8 bundle to <out>-int8 (static encoder, dynamic decoder) [default: the run's "
                   "preset's: int8 for --preset edge, else none].")
@click.option("--fp16", is_flag=True, help="Also write an fp16 bundle to <out>-fp16.")
@click.option("--format", "graph_format", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="ort: also write the graphs in ONNX Runtime's ORT format, for ONNX Runtime Mobile and minimal "
                   "builds, to <out>-ort (and <out>-int8-ort with --quantize int8), each with the "
                   "required_operators_and_types.config of both graphs for a reduced build, checked against the "
                   "ONNX bundle (greedy and seeded sampling). The ONNX bundle is always written: it is the source.")
@click.option("--ort-platform", type=click.Choice(list(ORT_PLATFORMS)), default="x86", show_default=True,
              help="With --format ort: the CPU family the ORT-format graphs are converted for (ONNX Runtime fuses "
                   "int8 nodes differently for each; either runs on both, slower on the other). The manifest "
                   "records it (provenance.ort_format.platform).")
@click.option("--cell", type=click.Choice(list(RECURRENT_CELLS)), default="operator", show_default=True,
              help="How both graphs compute the recurrent cell: operator, the ONNX LSTM/GRU/RNN operator; matmul, "
                   "plain MatMul/Add/Sigmoid/Tanh nodes (the same function from the same weights; the int8 variant "
                   "then quantizes those MatMuls). The bundle's capkit.json records it (cell).")
@click.option("--force", is_flag=True,
              help="Write into an --out folder that holds other files too: only the bundle's own files are "
                   "replaced, no other file is touched [default: refuse such a folder; an existing bundle is "
                   "replaced whole, atomically, without --force].")
@images_option("Image file, folder or pattern for the parity check and int8 calibration (repeatable); "
               "synthetic images top them up to 32.")
@json_option
def export(checkpoint: Optional[str], out_dir: Optional[str], opset: int, check: bool, quantize: Optional[str],
           fp16: bool, graph_format: str, ort_platform: str, cell: str, force: bool, images: tuple[str, ...],
           as_json: bool) -> None:
    """Export a checkpoint (default: runs/latest's best.pt) to an ONNX bundle, then check it against PyTorch."""
    with user_errors():
        from capkit.export.onnx_export import export_checkpoint

        report = export_checkpoint(checkpoint, out_dir, opset=opset, check=check, quantize=quantize, fp16=fp16,
                                   parity_images=images, force=force, graph_format=graph_format,
                                   ort_platform=ort_platform, cell=cell)
    status(report.render())
    echo_json(report.to_dict()) if as_json else click.echo(report.bundle)
    if not report.passed:
        raise click.exceptions.Exit(1)


__all__ = ["export"]
