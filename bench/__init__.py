"""``capkit bench``: the speed and memory of the runtime against PyTorch eager.

Not part of the runtime (``capkit.runtime`` holds only what an app embeds): this package measures
it from outside, through its public API. Importing it imports neither torch nor ONNX Runtime;
:func:`bench_bundle` imports ONNX Runtime and :func:`bench_checkpoint` torch, when called.

One *target* is a captioner measured on its own: an ONNX bundle (:func:`bench_bundle`) or the
PyTorch eager model of a checkpoint (:func:`bench_checkpoint`); both hand a Captioner to the same
:func:`bench_captioner`. Every figure is the median and the 90th percentile of repeated runs after
warm-up runs, all greedy (argmax) decoding with a fixed ``max_length``:

- ``encoder``: the image step on one preprocessed image (batch 1), ms;
- ``step``: one decoder step without the loop, batch 1, ms: the inference's greedy step, chained,
  as the loop calls it (each call's next token and state feed the next, from the encoded state and
  ``<start>``; ``step`` where the inference has no greedy step). Each sample is the mean step of a
  chain of ``max_length`` steps, so that it compares with ``loop`` (a sum of steps too) median for
  median: single steps are skewed (a thread wake-up now and then), and the median of single steps
  would leave that tail out of one side only;
- ``loop``: the decode loop of one caption, batch 1, from an encoded state, run back to back with
  the isolated steps; with ``steps`` (the steps it ran) it gives ``loop_overhead`` = loop /
  (steps x step), what the Python loop adds to the steps' own time;
- ``decode``: the same loop right after the caption's own encoder run, as a caption really runs
  (encoder excluded from the figure): the encoder's weights and activations have pushed the step's
  weights out of the CPU caches, so the first steps are slower; ``cold_step``: a chain of isolated
  steps right after an encoder run likewise; ``decode_overhead`` = decode / (steps x cold_step);
- ``caption``: end to end per image at batch 1 (image file -> caption: read, preprocess, encode,
  decode), ms; ``preprocess``: the reading and preprocessing alone, ms per image;
- ``throughput``: images per second captioning ``max(batch_sizes)`` image files at each batch size;
  ``encoder_per_image``: the encoder at each batch size, ms per image (what batching saves there);
- ``cold_start`` (optional): wall time of a fresh ``capkit caption IMAGE`` process, started with
  subprocess, and its peak resident memory (``ru_maxrss`` of that child).

:func:`compare` gives the ratios of two targets from the medians reported, so that every ratio can
be checked against the figures next to it.

Modules: :mod:`~capkit.bench.stats` (Stats, measure, machine_info), :mod:`~capkit.bench.timing`
(the measurement), :mod:`~capkit.bench.report` (reports, ratios, tables),
:mod:`~capkit.bench.cold_start` (fresh processes), :mod:`~capkit.bench.images` (the images),
:mod:`~capkit.bench.targets` (a bundle, a checkpoint).
"""

from capkit.bench.cold_start import DEFAULT_COLD_RUNS, caption_command, capkit_executable, cold_start, run_child
from capkit.bench.images import SYNTHETIC_PHOTO_SIZE, ImageSet, synthetic_photos
from capkit.bench.report import BenchReport, ColdStart, TargetReport, compare, render_text
from capkit.bench.stats import BenchError, Stats, machine_info, measure
from capkit.bench.targets import RUNTIME_DEFAULT, bench_bundle, bench_checkpoint
from capkit.bench.timing import (DEFAULT_BATCH_SIZES, DEFAULT_MAX_LENGTH, DEFAULT_REPEATS, DEFAULT_WARMUP, STEP_CHAINS,
                                 CaptionerTimer, IsolatedStep, TimedInference, bench_captioner)

__all__ = [
    "DEFAULT_BATCH_SIZES", "DEFAULT_COLD_RUNS", "DEFAULT_MAX_LENGTH", "DEFAULT_REPEATS", "DEFAULT_WARMUP",
    "RUNTIME_DEFAULT", "STEP_CHAINS", "SYNTHETIC_PHOTO_SIZE", "BenchError", "BenchReport", "CaptionerTimer",
    "ColdStart", "ImageSet", "IsolatedStep", "Stats", "TargetReport", "TimedInference", "bench_bundle",
    "bench_captioner", "bench_checkpoint", "caption_command", "capkit_executable", "cold_start", "compare",
    "machine_info", "measure", "render_text", "run_child", "synthetic_photos",
]
