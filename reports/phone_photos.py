#!/usr/bin/env python
"""Phone-size photos: decoding large JPEGs at reduced scale (libjpeg's DCT scaling), measured.

    .venv/bin/python reports/phone_photos.py                  # a few minutes; writes docs/phone-photos.md
    .venv/bin/python reports/phone_photos.py --json out.json  # also writes the figures as JSON
    .venv/bin/python reports/phone_photos.py --skip-bleu      # (a) and (b) only, a minute
    .venv/bin/python reports/phone_photos.py --print          # print the section, not writing the page

The runtime's ``preprocess(..., fast_decode=True)`` asks Pillow's ``draft`` for a JPEG at least twice
the spec's ``resize`` on its shorter side: libjpeg then decodes it at 1/2, 1/4 or 1/8 scale, and the
reduced image is resized as always. This script decides whether that is the default:

(a) time of reading + preprocessing a 12-megapixel JPEG (4032x3024, about 2 MB at quality 90:
    ``capkit.bench.images.phone_photos``, gradients, a shape and noise) with and without the draft,
    at the default spec (resize 256, crop 224, the seed configuration's), and of a 640x480 JPEG;
(b) the difference of the preprocessed tensor against full decoding, in 8-bit levels (the tensor's
    difference times std times 255): the largest and the mean absolute value, over those photos;
(c) greedy BLEU-4 on the demo's test split with every image upscaled (bicubic) to ``--size`` square
    and saved as a JPEG at quality 90: full decoding against fast decoding, and the original PNGs.
    It needs a trained demo model (``--model`` bundle, else ``--checkpoint``, default runs/latest);
    without one the BLEU part is reported pending. The large JPEGs are kept under reports/.cache/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from capkit.reports.common import DOCS, REPO, add_report_arguments, publish, shown_path
from capkit.runtime.errors import one_line

CACHE = REPO / "reports" / ".cache" / "phone-photos"
PAGE = DOCS / "phone-photos.md"
PAGE_TITLE = "Phone-size photos, measured"
MARK_START, MARK_END = "<!-- phone-photos:start -->", "<!-- phone-photos:end -->"
DEMO_DATA = Path.home() / ".cache" / "capkit" / "synthetic-n4800-s0-px64"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(call: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Median and 90th percentile (ms) of ``repeats`` timed calls after ``warmup`` untimed ones (capkit.bench's)."""
    from capkit.bench import Stats, measure

    stats = Stats.of(measure(call, repeats, warmup))
    return {"median_ms": stats.median, "p90_ms": stats.p90, "runs": stats.runs}


def levels(a: np.ndarray, b: np.ndarray, spec: Any) -> np.ndarray:
    """|a - b| of two preprocessed tensors (3, H, W) in 8-bit levels: the normalisation undone."""
    std = np.asarray(spec.std, dtype=np.float64)[:, None, None]
    return np.abs((a.astype(np.float64) - b.astype(np.float64)) * std * 255.0)


# -- (a) and (b) --------------------------------------------------------------------------------------------------
def speed_and_pixels(count: int, repeats: int, warmup: int) -> dict[str, Any]:
    from PIL import Image

    from capkit.bench.images import phone_photos, synthetic_photos
    from capkit.runtime import image_files
    from capkit.runtime.image_files import draft_scale
    from capkit.runtime.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec()  # resize 256, crop 224: the default and the seed configuration's
    with tempfile.TemporaryDirectory(prefix="capkit-phone-") as folder:
        say(f"writing {count} 12-megapixel JPEGs")
        phones = phone_photos(folder, count)
        small = synthetic_photos(folder, 1)[0]
        out: dict[str, Any] = {"spec": spec.to_dict(), "photos": count,
                               "photo_size": list(Image.open(phones[0]).size),
                               "photo_mb": [round(os.path.getsize(p) / 1e6, 2) for p in phones]}
        width, height = out["photo_size"]
        scale = draft_scale(width, height, spec.resize)
        out["draft_scale"] = scale
        out["decoded_size_with_draft"] = [-(-width // scale), -(-height // scale)]

        def decode_only(path: str, draft: int) -> None:
            with Image.open(path) as img:
                if draft > 1:
                    img.draft("RGB", (width // draft, height // draft))
                img.load()

        def oversample_one(call: Callable[[], Any]) -> Callable[[], Any]:
            """``call`` with DRAFT_OVERSAMPLE 1: the smallest decoded size that still covers the resized size."""
            def run(*args: Any) -> Any:
                saved, image_files.DRAFT_OVERSAMPLE = image_files.DRAFT_OVERSAMPLE, 1
                try:
                    return call(*args)
                finally:
                    image_files.DRAFT_OVERSAMPLE = saved
            return run

        smallest = oversample_one(draft_scale)(width, height, spec.resize)
        out["draft_scale_oversample_1"] = smallest

        say("timing (a)")
        out["time"] = {
            "preprocess_full": timed(lambda: [preprocess(p, spec, fast_decode=False) for p in phones], repeats, warmup),
            "preprocess_draft": timed(lambda: [preprocess(p, spec, fast_decode=True) for p in phones], repeats, warmup),
            "preprocess_draft_oversample_1": timed(oversample_one(
                lambda: [preprocess(p, spec, fast_decode=True) for p in phones]), repeats, warmup),
            "decode_full": timed(lambda: [decode_only(p, 1) for p in phones], repeats, warmup),
            "decode_draft": timed(lambda: [decode_only(p, scale) for p in phones], repeats, warmup),
            "decode_draft_oversample_1": timed(lambda: [decode_only(p, smallest) for p in phones], repeats, warmup),
            "preprocess_640x480": timed(lambda: [preprocess(small, spec) for _ in phones], repeats, warmup),
        }
        for figures in out["time"].values():  # per photo
            for key in ("median_ms", "p90_ms"):
                figures[key] /= count
        out["speedup"] = out["time"]["preprocess_full"]["median_ms"] / out["time"]["preprocess_draft"]["median_ms"]
        say("pixel difference (b)")
        full = [preprocess(p, spec, fast_decode=False) for p in phones]
        for key, fast in (("pixels", lambda p: preprocess(p, spec, fast_decode=True)),
                          ("pixels_oversample_1", oversample_one(lambda p: preprocess(p, spec, fast_decode=True)))):
            diffs = [levels(fast(p), f, spec) for p, f in zip(phones, full)]
            out[key] = {"max_abs_levels": float(max(d.max() for d in diffs)),
                        "mean_abs_levels": float(np.mean([d.mean() for d in diffs])),
                        "p99_abs_levels": float(np.percentile(np.concatenate([d.ravel() for d in diffs]), 99))}
    return out


# -- (c) -------------------------------------------------------------------------------------------------------------
def open_model(model: Optional[str], checkpoint: Optional[str]) -> tuple[Any, str]:
    """(a Captioner, what it is) for the trained demo model: a bundle, else a checkpoint's PyTorch model."""
    from capkit.runtime.captioner import Captioner

    bundle = Path(model) if model else REPO / "runs" / "latest" / "bundle"
    if (bundle / "capkit.json").is_file():
        return Captioner(str(bundle), device="cpu"), f"bundle {shown_path(bundle.resolve())}"
    from capkit.training.checkpoint import resolve_checkpoint
    from capkit.training.torch_inference import checkpoint_captioner

    path = resolve_checkpoint(checkpoint or str(REPO / "runs" / "latest"))
    return checkpoint_captioner(path, "cpu"), f"checkpoint {shown_path(path)} (PyTorch)"


def large_jpegs(records: list[Any], side: int) -> dict[str, Path]:
    """Each record's image upscaled (bicubic) to side x side and saved as a JPEG at quality 90, kept in CACHE."""
    from PIL import Image

    folder = CACHE / f"demo-test-{side}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, record in enumerate(records):
        path = folder / f"{record.image_id}.jpg"
        if not path.is_file():
            if index % 50 == 0:
                say(f"  upscaling {index}/{len(records)}")
            with Image.open(record.image) as img:
                img.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(path, quality=90)
        paths[record.image_id] = path
    return paths


def bleu(model: Optional[str], checkpoint: Optional[str], data: Path, side: int, limit: Optional[int]) -> dict[str, Any]:
    from capkit.runtime.decoding import DecodingOptions, decode
    from capkit.runtime.preprocess import preprocess
    from capkit.training.datasets import load_dataset
    from capkit.training.evaluate import score_captions

    try:
        captioner, what = open_model(model, checkpoint)
    except Exception as e:
        return {"pending": f"no trained demo model ({one_line(e, 200)}): train one with "
                           "`capkit train --epochs 2 --no-progress`"}
    if not data.is_dir():
        return {"pending": f"no demo data at {shown_path(data)}: `capkit data synthetic`"}
    records = list(load_dataset(str(data))["test"])[:limit] if limit else list(load_dataset(str(data))["test"])
    say(f"(c) {len(records)} test images upscaled to {side}x{side} JPEGs; model: {what}")
    jpegs = large_jpegs(records, side)
    vocab, spec = captioner.vocab, captioner.spec
    options = DecodingOptions(max_length=captioner.defaults.max_length)  # greedy
    references = {r.image_id: r.captions for r in records}

    def captions(source: Callable[[Any], Any], fast: bool) -> tuple[dict[str, str], np.ndarray, float]:
        out, rows, seconds = {}, [], 0.0
        for start in range(0, len(records), 32):
            chunk = records[start:start + 32]
            started = time.perf_counter()
            pixels = np.stack([preprocess(source(r), spec, fast_decode=fast) for r in chunk])  # (B, 3, H, W)
            seconds += time.perf_counter() - started
            rows.append(pixels)
            for r, result in zip(chunk, decode(captioner.inference, pixels, options, vocab)):
                out[r.image_id] = vocab.decode(result.tokens)
        return out, np.concatenate(rows), seconds

    png, png_pixels, _ = captions(lambda r: r.image, False)
    full, full_pixels, full_s = captions(lambda r: jpegs[r.image_id], False)
    fast, fast_pixels, fast_s = captions(lambda r: jpegs[r.image_id], True)
    scores = {name: score_captions(references, hyp)["bleu4"] for name, hyp in
              (("png", png), ("jpeg_full", full), ("jpeg_fast", fast))}
    diff = levels(fast_pixels, full_pixels, spec)
    return {"model": what, "images": len(records), "jpeg_side": side, "spec": spec.to_dict(),
            "bleu4": scores, "bleu4_change": scores["jpeg_fast"] - scores["jpeg_full"],
            "captions_changed": sum(full[k] != fast[k] for k in full),
            "pixels": {"max_abs_levels": float(diff.max()), "mean_abs_levels": float(diff.mean())},
            "preprocess_ms_per_image": {"full": full_s * 1e3 / len(records), "fast": fast_s * 1e3 / len(records)}}


def _ms(figures: dict[str, float]) -> str:
    return f"{figures['median_ms']:.1f} ms ({figures['p90_ms']:.1f})"


def render(result: dict[str, Any]) -> str:
    """The page's section, markers included: (a), (b) and (c) as one table, full decoding beside fast."""
    t, spec, machine = result["time"], result["spec"], result.get("machine", {})
    scale, smallest = result["draft_scale"], result["draft_scale_oversample_1"]
    px, px1 = result["pixels"], result["pixels_oversample_1"]
    width, height = result["photo_size"]
    lines = [
        MARK_START,
        "<!-- written by reports/phone_photos.py; edit the script, not this section -->",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, load average "
        f"{machine.get('load_average')} before (1, 5, 15 min). {result['photos']} generated "
        f"{width}x{height} JPEGs (about {max(result['photo_mb']):.1f} MB each at quality 90), resize "
        f"{spec['resize']} / crop {spec['crop']}; times per photo, median (p90) of {result.get('repeats', '?')} runs after warm-up.",
        "",
        "| 12 MP JPEG | full decoding | fast decoding (default) |",
        "|---|---|---|",
        f"| read + preprocess | {_ms(t['preprocess_full'])} | {_ms(t['preprocess_draft'])} (1/{scale} scale, "
        f"{result['speedup']:.1f}x less; at 1/{smallest}: {t['preprocess_draft_oversample_1']['median_ms']:.1f} ms) |",
        f"| JPEG decoding alone | {_ms(t['decode_full'])} | {_ms(t['decode_draft'])} (at 1/{smallest}: "
        f"{t['decode_draft_oversample_1']['median_ms']:.1f} ms) |",
        f"| preprocessed tensor vs full decoding (8-bit levels) | identical | max {px['max_abs_levels']:.0f}, mean "
        f"{px['mean_abs_levels']:.2f}, 99th percentile {px['p99_abs_levels']:.0f} (at 1/{smallest}: max "
        f"{px1['max_abs_levels']:.0f}, mean {px1['mean_abs_levels']:.2f}) |",
    ]
    b = result.get("bleu", {})
    if b and "pending" not in b:
        s = b["bleu4"]
        lines.append(f"| greedy BLEU-4, {b['images']} demo test images as {b['jpeg_side']}x{b['jpeg_side']} JPEGs | "
                     f"{s['jpeg_full']:.4f} | {s['jpeg_fast']:.4f} ({b['bleu4_change']:+.4f}; {b['captions_changed']} "
                     "captions differ) |")
    lines += ["", f"A 640x480 JPEG's read + preprocess: {t['preprocess_640x480']['median_ms']:.1f} ms."]
    if "pending" in b:
        lines.append(f"BLEU-4: pending: {b['pending']}.")
    elif b:
        lines.append(f"BLEU-4 model: {b['model']}; the original PNGs give it {b['bleu4']['png']:.4f}.")
    lines.append(MARK_END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=3, help="12 MP photos for (a) and (b)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", default=None, help="trained demo bundle [default: runs/latest/bundle]")
    parser.add_argument("--checkpoint", default=None, help="else a trained demo checkpoint [default: runs/latest]")
    parser.add_argument("--data", type=Path, default=DEMO_DATA, help="the demo data (`capkit data synthetic`)")
    parser.add_argument("--size", type=int, default=3024, help="side of the upscaled test JPEGs for (c)")
    parser.add_argument("--limit", type=int, default=None, help="test images for (c) [default: all]")
    parser.add_argument("--skip-bleu", action="store_true")
    add_report_arguments(parser, PAGE)
    args = parser.parse_args()
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
    else:
        result = speed_and_pixels(args.photos, args.repeats, args.warmup)
        from capkit.bench import machine_info

        result["machine"] = machine_info()
        result["repeats"] = args.repeats
        if not args.skip_bleu:
            result["bleu"] = bleu(args.model, args.checkpoint, args.data, args.size, args.limit)
    publish(args, PAGE, PAGE_TITLE, MARK_START, MARK_END, render(result), result)


if __name__ == "__main__":
    main()
