"""``capkit bench``: a thin command over :mod:`capkit.bench`: ONNX bundles (no torch), and PyTorch
eager on a checkpoint only when one is given and torch is installed. The tables (or ``--json``) go
to stdout, progress to stderr. Nothing heavy is imported until the command runs."""

from __future__ import annotations

from typing import Optional

import click

from capkit.bench.cold_start import DEFAULT_COLD_RUNS
from capkit.bench.images import DEFAULT_PHONE_PHOTOS, DEFAULT_SYNTHETIC_COUNT, SYNTHETIC_PHOTO_SIZE
from capkit.bench.timing import DEFAULT_BATCH_SIZES, DEFAULT_MAX_LENGTH, DEFAULT_REPEATS, DEFAULT_WARMUP
from capkit.cli.options import (device_option, echo_json, images_option, json_option, status, threads_option,
                                user_errors)


def _batch_sizes(value: str) -> list[int]:
    try:
        sizes = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not sizes or sizes[0] < 1:
        raise click.BadParameter(f"{value!r}: batch sizes must be integers >= 1")
    return sizes


def torch_importable() -> bool:
    """Imports torch now, before ONNX Runtime opens a CUDA session: ONNX Runtime then uses the CUDA
    and cuDNN libraries torch loaded, whereas torch imported after ONNX Runtime loaded its own
    refuses to start ("conflicting cuDNN"). False, with a warning, when torch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        status(f"Warning: PyTorch is not installed ({e}); the PyTorch eager side is skipped")
        return False
    return True


@click.command("bench")
@click.option("--model", "models", multiple=True, metavar="BUNDLE",
              help="Bundle folder to measure (repeatable, e.g. fp32 and int8) [default: $CAPKIT_MODEL, else "
                   "runs/latest/bundle, unless --checkpoint alone is given].")
# The shared --checkpoint defaults to runs/latest; here no checkpoint means no PyTorch side, hence its own help.
@click.option("--checkpoint", default=None, metavar="RUN_OR_PT",
              help="Also measure PyTorch eager on this checkpoint's weights: a .pt file or a run folder (its "
                   "best.pt); needs capkit[train].")
@images_option(f"Image file, folder or glob pattern (repeatable) [default: {DEFAULT_SYNTHETIC_COUNT} synthetic "
               f"{SYNTHETIC_PHOTO_SIZE[0]}x{SYNTHETIC_PHOTO_SIZE[1]} JPEG photos].")
@click.option("--phone-photos", "phones", type=click.IntRange(0), default=None,
              help="Synthetic 12-megapixel JPEGs (4032x3024, about 2 MB) captioned apart, for the phone photo / "
                   f"caption ratio [default: {DEFAULT_PHONE_PHOTOS} with the synthetic photos, 0 with --images].")
@click.option("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)), show_default=True,
              help="Batch sizes for images/s, comma-separated.")
@device_option
@threads_option
@click.option("--step-threads", type=click.IntRange(1), default=None,
              help="ONNX Runtime threads of the decoder step graph [default: as --threads].")
@click.option("--spin-us", type=click.IntRange(0), default=None,
              help="How long idle ONNX Runtime threads spin before sleeping, microseconds [default: the runtime's].")
@click.option("--repeats", type=click.IntRange(1), default=DEFAULT_REPEATS, show_default=True,
              help="Timed runs per figure.")
@click.option("--warmup", type=click.IntRange(0), default=DEFAULT_WARMUP, show_default=True, help="Untimed runs first.")
@click.option("--max-length", type=click.IntRange(1), default=DEFAULT_MAX_LENGTH, show_default=True,
              help="Greedy caption length limit (random-weight models always run it out).")
@click.option("--cold-runs", type=click.IntRange(0), default=DEFAULT_COLD_RUNS, show_default=True,
              help="Fresh `capkit caption` processes timed per target (0: no cold start, no peak memory).")
@json_option
def bench(models: tuple[str, ...], checkpoint: Optional[str], images: tuple[str, ...], phones: Optional[int],
          batch_sizes: str, device: str,
          threads: Optional[int], step_threads: Optional[int], spin_us: Optional[int], repeats: int, warmup: int,
          max_length: int, cold_runs: int, as_json: bool) -> None:
    """Speed and memory of the ONNX runtime (and of PyTorch eager with --checkpoint), side by side.

    Median (p90) of: encoder, one decoder step, the decode loop, a whole caption at batch 1, images/s
    per batch size, the cold start of `capkit caption IMAGE` and its peak memory; then the ratios;
    and a phone-size photo's caption (12 MP JPEG) against a regular one's (--phone-photos).
    --threads sets ONNX Runtime's intra-op threads of both graphs, and torch's.

    \b
    capkit bench --model runs/latest/bundle --model runs/latest/bundle-int8 --checkpoint runs/latest
    capkit bench --batch-sizes 1,16 --cold-runs 0 --json
    """
    from capkit.bench import BenchReport, ImageSet, bench_bundle, bench_checkpoint, machine_info

    sizes = _batch_sizes(batch_sizes)
    spin = {} if spin_us is None else {"spin_us": spin_us}
    with user_errors():
        has_torch = checkpoint is not None and torch_importable()  # first: see torch_importable
        targets = list(models) if models or checkpoint else [None]
        machine = machine_info()
        common = dict(batch_sizes=sizes, repeats=repeats, warmup=warmup, max_length=max_length, status=status)
        reports = []
        with ImageSet(images, phones=phones) as image_set:
            common["phone_images"] = image_set.phone_paths
            settings = {"images": image_set.describe(), "batch_sizes": sizes, "repeats": repeats, "warmup": warmup,
                        "max_length": max_length, "decoding": "greedy", "device": device, "threads": threads,
                        "step_threads": step_threads, "spin_us": spin_us, "cold_runs": cold_runs}
            for bundle in targets:
                reports.append(bench_bundle(bundle, image_set.paths, device=device, threads=threads,
                                            step_threads=step_threads, cold_runs=cold_runs, **spin, **common))
            if has_torch:
                reports.append(bench_checkpoint(checkpoint, image_set.paths, device=device, threads=threads,
                                                cold_runs=cold_runs, **common))
        report = BenchReport(machine, settings, reports, load_after=machine_info()["load_average"])
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.render())


__all__ = ["bench"]
