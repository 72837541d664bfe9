#!/usr/bin/env python
"""Where a caption's time goes in the browser, in Node and in Python, on the same bundle and image, side by side:
the page (`capkit serve-web`'s, onnxruntime-web WASM) with 1 and 2 threads, Node (onnxruntime-node) and the Python
runtime, each on one thread, in rounds taken in turn so that a noisy machine weighs on all of them alike.

    scripts/demo.sh                          # first: the demo model, exported to runs/latest/bundle
    .venv/bin/python reports/js_speed.py     # the demo bundle on a demo test image; writes docs/js.md's speed section
    .venv/bin/python reports/js_speed.py --model BUNDLE --image photo.jpg --print

Each figure is the median over rounds of each round's median caption (``--repeats`` captions a round, after
``--warmup`` captions untimed). The warm-up matters in the browser: V8 first runs onnxruntime-web's WebAssembly
on its baseline compiler (Liftoff) and compiles the hot functions with its optimising one (TurboFan) on background
threads, which share this 2-core machine with the WASM threads: the first captions of a page take
several times the steady ones, with 2 threads longer than with 1. The timed page runs with its own warm-up off
(``?warmup=0``), its untimed captions are plotted (docs/js-warmup.png), and a second table gives the first captions
of a page, with no warm-up and after the page's own (clients/web/app.js, ``Captioner.warmUp``).

The JavaScript stages come from ``Captioner.caption``'s timings (clients/js/src/captioner.js): the
image decoded to pixels, preprocessed, the encoder graph, the step graph (all its runs) and the decoding loop's own
work. The Python runtime's: ``Captioner.preprocess`` (decoding and preprocessing) and ``caption_pixels``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from capkit.reports.common import DOCS, REPO, publish, say, shown_path, start_report
from capkit.reports.js_page import demo_test_image, run_page

WORK = REPO / "reports" / ".cache" / "js-speed"
PAGE = DOCS / "js.md"
PAGE_TITLE = "The JavaScript runtime: parity and speed, measured"
MARK_START, MARK_END = "<!-- speed:start -->", "<!-- speed:end -->"
NODE_TIMING = REPO / "clients" / "js" / "tools" / "timing.mjs"
BROWSER_GOAL = 3.0  # the browser's caption at most this many times the Python runtime's, one thread each
STAGES = ("decode_ms", "preprocess_ms", "encoder_ms", "steps_ms", "decoding_ms")
PLOT = DOCS / "js-warmup.png"
EARLY = 25  # the first-captions table: the median of this many captions after the page loaded


def python_timing(bundle: Path, image: Path, repeats: int, warmup: int) -> dict[str, Any]:
    """The Python runtime on one thread: median caption time, and its preprocessing and decoding apart."""
    from capkit.runtime import Captioner

    captioner = Captioner(bundle, device="cpu", threads=1)
    for _ in range(max(1, warmup)):
        captioner.caption(image)
    totals, prepared, decoded = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        pixels = captioner.preprocess(image)
        middle = time.perf_counter()
        captioner.caption_pixels(pixels[None], [None], captioner.defaults)
        ended = time.perf_counter()
        prepared.append((middle - started) * 1e3)
        decoded.append((ended - middle) * 1e3)
        started = time.perf_counter()
        captioner.caption(image)
        totals.append((time.perf_counter() - started) * 1e3)
    return {"median_ms": statistics.median(totals),
            "stages": {"preprocess_ms": statistics.median(prepared), "graphs_and_loop_ms": statistics.median(decoded)}}


def node_timing(bundle: Path, image: Path, repeats: int, warmup: int) -> dict[str, Any]:
    proc = subprocess.run(["node", str(NODE_TIMING), str(bundle), str(image), str(repeats), "1", str(warmup)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the Node run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout)


def measure(bundle: Path, image: Path, rounds: int, repeats: int, warmup: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(rounds):
        say(f"round {round_ + 1}/{rounds}: browser (1 and 2 threads), Node, Python")
        with tempfile.TemporaryDirectory(prefix="capkit-speed-") as folder:
            job = {"image": str(image), "timingOnly": True, "repeats": repeats, "warmup": warmup, "early": EARLY,
                   "threads": [1, 2]}
            page = run_page(bundle, job, Path(folder))["timings"]
        for threads, timing in page.items():
            if "error" in timing:
                raise SystemExit(f"the page could not caption: {timing['error']}")
            runs.setdefault(f"browser, {threads} thread{'s' if threads != '1' else ''}", []).append(timing)
        runs.setdefault("node, 1 thread", []).append(node_timing(bundle, image, repeats, warmup))
        runs.setdefault("python, 1 thread", []).append(python_timing(bundle, image, repeats, warmup))
    rows = {}
    for name, timings in runs.items():
        keys = {key for timing in timings for key in timing["stages"]}
        rows[name] = {"median_ms": statistics.median(t["median_ms"] for t in timings),
                      "rounds_ms": [t["median_ms"] for t in timings],
                      "stages": {key: statistics.median(t["stages"][key] for t in timings) for key in sorted(keys)}}
        if all("afterWarmUp_ms" in t for t in timings):  # the page's: each round's captions after loading, in order
            rows[name]["warmup_rounds_ms"] = [t["warmup_ms"] for t in timings]
            rows[name]["after_warmup_rounds_ms"] = [t["afterWarmUp_ms"] for t in timings]
            rows[name]["page_warmups"] = [t["pageWarmUps"] for t in timings]
            rows[name]["page_warmup_ms"] = timings[0]["pageWarmUpMs"]  # clients/web/app.js's, the same every round
        say(f"  {name:18} {rows[name]['median_ms']:6.1f} ms (rounds: "
            f"{', '.join(f'{v:.1f}' for v in rows[name]['rounds_ms'])})")
    return rows


def early(series: list[list[float]]) -> str:
    """The first caption and the median of the first :data:`EARLY` of each round's ``series`` (medians over rounds),
    as two table cells."""
    first = statistics.median(times[0] for times in series)
    return f"{first:.1f} | {statistics.median(statistics.median(times[:EARLY]) for times in series):.1f}"


def first_captions(rows: dict[str, Any]) -> list[str]:
    """The table of the page's first captions: with its warm-up off, and left to it."""
    lines = ["| page | warm-up | first caption | median of the first " f"{EARLY} | steady (above) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, row in rows.items():
        if "warmup_rounds_ms" not in row:
            continue
        blanks = statistics.median(row["page_warmups"])
        lines += [f"| {name} | none (`?warmup=0`) | {early(row['warmup_rounds_ms'])} | {row['median_ms']:.1f} |",
                  f"| {name} | the page's, {row['page_warmup_ms'] / 1e3:g} s ({blanks:.0f} blank captions) | "
                  f"{early(row['after_warmup_rounds_ms'])} | {row['median_ms']:.1f} |"]
    return lines


def plot(rows: dict[str, Any], path: Path) -> None:
    """Each page row's captions after loading, in order (the median over rounds of each caption's time, then a
    running median of 9), against the Python runtime's steady caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for name, row in rows.items():
        series = row.get("warmup_rounds_ms")
        if not series:
            continue
        per_caption = [statistics.median(times[i] for times in series) for i in range(min(map(len, series)))]
        smooth = [statistics.median(per_caption[max(0, i - 4):i + 5]) for i in range(len(per_caption))]
        ax.plot(range(1, len(smooth) + 1), smooth, label=f"{name} (page)")
    ax.axhline(rows["python, 1 thread"]["median_ms"], color="gray", linestyle="--", label="python, 1 thread (steady)")
    ax.set_xlabel("caption since the page loaded")
    ax.set_ylabel("ms per caption (running median of 9)")
    ax.set_yscale("log")
    ax.set_yticks([5, 10, 20, 40, 80])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("The page's first captions, while V8 optimises the WebAssembly", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cell(stages: dict[str, float], key: str) -> str:
    return f"{stages[key]:.2f}" if key in stages else "-"


def render(measured: dict[str, Any]) -> str:
    rows = measured["rows"]
    python = rows["python, 1 thread"]["median_ms"]
    one, two = rows["browser, 1 thread"]["median_ms"], rows["browser, 2 threads"]["median_ms"]
    lines = [MARK_START, "```", measured["command"], "```", "",
             f"{measured['bundle']} captioning {measured['image']} ({measured['size']}), greedy; this machine "
             f"({measured['cores']} cores), {measured['rounds']} rounds taken in turn, each of {measured['repeats']} "
             f"captions after {measured['warmup']} untimed; milliseconds, medians. {measured['chromium']}; "
             f"onnxruntime-web and -node {measured['ort_js']}.", "",
             "| runtime | caption | x Python | image decode | preprocess | encoder | steps (runs) | decoding loop |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        stages = row["stages"]
        steps = f"{stages['steps_ms']:.2f} ({stages['steps']:.0f})" if "steps_ms" in stages else "-"
        decode = cell(stages, "decode_ms")
        prep = cell(stages, "preprocess_ms")
        if name.startswith("python"):  # decoding the file is part of its preprocess
            decode, prep = "-", f"{stages['preprocess_ms']:.2f} (with decode)"
            steps = f"{stages['graphs_and_loop_ms']:.2f} (graphs and loop)"
        lines.append(f"| {name} | {row['median_ms']:.1f} | {row['median_ms'] / python:.1f}x | {decode} | {prep} | "
                     f"{cell(stages, 'encoder_ms')} | {steps} | {cell(stages, 'decoding_ms')} |")
    ratio = one / python
    lines += ["", f"- Goal: the browser's caption at most {BROWSER_GOAL:g}x the Python runtime's, one thread each: "
                  f"{ratio:.2f}x - {'met' if ratio <= BROWSER_GOAL else 'NOT met'}.",
              f"- Goal: 2 WASM threads not slower than 1: {two:.1f} ms against {one:.1f} - "
              f"{'met' if two <= one else 'NOT met'}.", "",
              f"The first captions of a page, in milliseconds (docs/js-warmup.png plots the first {measured['warmup']} "
              "with the warm-up off):", "", *first_captions(rows), "", MARK_END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "latest" / "bundle", help="the bundle")
    parser.add_argument("--image", type=Path, default=None, help="the image [default: a demo test image]")
    parser.add_argument("--test-image", type=int, default=0, help="which demo test image (without --image)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every runtime, taken in turn")
    parser.add_argument("--repeats", type=int, default=40, help="captions timed per runtime and round")
    parser.add_argument("--warmup", type=int, default=100, help="untimed captions before them (the page's are plotted)")
    args, _, measured = start_report(parser, PAGE, WORK)
    if measured is None:
        if not (args.model / "capkit.json").is_file():
            raise SystemExit(f"no bundle at {shown_path(args.model)}: run scripts/demo.sh first, or give --model")
        from PIL import Image

        image = (args.image or demo_test_image(args.test_image)).resolve()
        chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
        ort_js = json.loads((REPO / "clients" / "js" / "node_modules" / "onnxruntime-web" / "package.json").read_text())
        command = ".venv/bin/python reports/js_speed.py" + (f" --model {shown_path(args.model)}"
                                                            if args.model != REPO / "runs" / "latest" / "bundle" else "")
        with Image.open(image) as opened:
            size = f"{opened.format} {opened.width}x{opened.height}"
        measured = {"command": command, "bundle": shown_path(args.model), "image": image.name, "size": size,
                    "cores": os.cpu_count(), "rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup,
                    "chromium": chromium or "Chromium", "ort_js": ort_js["version"],
                    "rows": measure(args.model, image, args.rounds, args.repeats, args.warmup)}
    if not args.print_section:
        plot(measured["rows"], PLOT)
    publish(args, PAGE, PAGE_TITLE, MARK_START, MARK_END, render(measured), measured)


if __name__ == "__main__":
    main()
