#!/usr/bin/env python
"""Where a batched caption's time goes on a GPU, and what each candidate change gains, in one run; writes
its section of docs/cuda.md (which says how to read it). ``scripts/gpu_check.sh --throughput`` runs it.

    scripts/gpu_check.sh --throughput                       # on a machine with a GPU: measures, writes docs/cuda.md
    scripts/gpu_check.sh --throughput --json run.json --print   # keep the measurements; print the section only
    scripts/gpu_check.sh --throughput --from-json run.json  # measure nothing: write the section from a saved run
    scripts/gpu_check.sh --throughput --cpu --size small --rounds 1 --print   # the same steps on the CPU (the test)

On the seed configuration (ResNet-50 + LSTM 300/512, 10,000 words, 20 greedy steps, random weights)
it builds: a random-weight checkpoint, a "ragged" copy of it whose captions end at different steps
(random weights never end, so no row would ever finish), and their bundles: fp32 and fp16, each with
the recurrent cell as the ONNX operator and as plain MatMuls. Then:

1. per target and batch size (1, 8, 32), from preprocessed pixels: the encoder, the decode loop, its
   steps and host ``select`` calls, and images/s, the targets taking turns in every round (today's
   ONNX path; finished rows masked; the MatMul cell; both; fp16 likewise; PyTorch eager);
2. images/s from image files (``Captioner.caption_batch``, preprocessing on the CPU included) and the
   preprocessing alone, per image;
3. ONNX Runtime's profile of the step graph at batch 32: kernel time per operator type, the nodes
   placed on the CPU, Memcpy nodes, and its verbose log's placement lines at session creation;
4. on CUDA: the step graph replayed as a CUDA graph, and the encoder's first run at a new batch size
   with cuDNN's exhaustive and heuristic convolution search;
5. greedy captions on the device against the same bundle on the CPU (32 images) for every ONNX target;

and the figures of issue #26's targets and of each candidate against today's path. The models and the
targets measured are built in reports/throughput_models.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from capkit.bench.stats import machine_info
from capkit.bench.timing import TimedInference
from capkit.reports.common import DOCS, REPO, publish, say, start_report
from capkit.reports.throughput_models import PARITY_IMAGES, SIZES, Target, build, targets
from capkit.runtime.errors import first_line

PAGE, PAGE_TITLE = DOCS / "cuda.md", "CUDA, measured"
MARK_START, MARK_END = "<!-- throughput:start -->", "<!-- throughput:end -->"
WORK = REPO / "reports" / ".cache" / "cuda-throughput"
BATCHES = (1, 8, 32)
FILES_TARGETS = ("onnx fp32 (today)", "onnx fp32, matmul cell, masked rows", "onnx fp16 (today)", "pytorch eager",
                 "ragged: onnx fp32 (today)", "ragged: pytorch eager")  # timed from image files too


def time_batches(found: list[Target], pixels: np.ndarray, vocab: Any, max_length: int, rounds: int) -> None:
    """Every target at every batch size once per round (one round not recorded), the targets in turn."""
    from capkit.runtime.decoding import DecodingOptions, decode

    options = DecodingOptions(max_length=max_length)
    for index in range(1 + rounds):
        for batch in BATCHES:
            images = np.ascontiguousarray(np.resize(pixels, (batch, *pixels.shape[1:])))  # (B, 3, H, W)
            for target in found:
                timed = TimedInference(target.inference)
                started = time.perf_counter()
                decode(timed, images, options, vocab)
                seconds = time.perf_counter() - started
                if index:
                    row = target.rows[batch]
                    row["encoder_ms"].append(timed.encode_seconds * 1e3)
                    row["loop_ms"].append((seconds - timed.encode_seconds) * 1e3)
                    row["caption_ms"].append(seconds * 1e3)  # encoder and loop, as a batch runs
                    row["steps"].append(timed.steps)
                    row["selects"].append(timed.selects)


def batch_table(found: list[Target]) -> list[dict[str, Any]]:
    rows = []
    for target in found:
        for batch, row in sorted(target.rows.items()):
            caption = statistics.median(row["caption_ms"])
            steps = statistics.median(row["steps"])
            rows.append({"target": target.name, "batch": batch, "encoder_ms": statistics.median(row["encoder_ms"]),
                         "caption_ms": caption, "step_ms": statistics.median(row["loop_ms"]) / max(steps, 1),
                         "steps": steps,
                         "selects": statistics.median(row["selects"]), "images_per_s": batch / caption * 1e3})
    return rows


def files_throughput(found: list[Target], files: list[str], spec: Any, vocab: Any, max_length: int) -> dict[str, Any]:
    """images/s of ``Captioner.caption_batch`` over image files (preprocessing included) at batch 32, and the
    preprocessing alone, ms per image."""
    from capkit.runtime.captioner import Captioner
    from capkit.runtime.preprocess import preprocess

    started = time.perf_counter()
    for path in files:
        preprocess(path, spec)
    result: dict[str, Any] = {"preprocess_ms_per_image": (time.perf_counter() - started) / len(files) * 1e3}
    for target in found:
        captioner = Captioner.from_inference(target.inference, vocab, spec, max_length)
        captioner.caption_batch(files, batch_size=max(BATCHES))  # warm
        started = time.perf_counter()
        captioner.caption_batch(files, batch_size=max(BATCHES))
        result[target.name] = len(files) / (time.perf_counter() - started)
    return result


LOG_PATTERNS = ("placed on", "Memcpy", "not assigned", "fall back")  # the placement lines of a verbose session log


def placement_log(path: Path, providers: list[Any]) -> list[str]:
    """The lines of ONNX Runtime's verbose log, while a session of ``path`` is created, that say where nodes
    were placed and which copies were added (its logger writes to the process's stderr: captured from file
    descriptor 2). A session of its own, so that the profiled one runs at the default log level."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 0  # verbose
    with tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            ort.InferenceSession(str(path), options, providers=providers)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    lines = [line.split("] ", 1)[-1].strip()[:240] for line in text.splitlines() if any(p in line for p in LOG_PATTERNS)]
    return list(dict.fromkeys(lines))  # each once, in order (the transformers run at several levels)


def profile_step(bundle: Path, device: str, batch: int, steps: int) -> dict[str, Any]:
    """ONNX Runtime's profile of ``steps`` greedy steps of ``bundle``'s step graph at ``batch``."""
    import onnxruntime as ort

    from capkit.runtime import load_bundle
    from capkit.runtime.onnx_inference import OnnxInference

    loaded = load_bundle(bundle)
    inference = OnnxInference(loaded, device=device)
    names = loaded.manifest.decoder
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="capkit-profile-")) / "step")
    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"] if device == "cuda" \
        else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(loaded.decoder_path), options, providers=providers)
    crop = loaded.manifest.preprocess.crop
    encoded = inference.encode(np.zeros((batch, 3, crop, crop), np.float32))
    state = [s.numpy() if hasattr(s, "numpy") else s for s in encoded]  # each (L, B, H), on the host
    tokens = np.full(batch, 1, np.int64)
    outputs = [*names.greedy_outputs, *names.state_outputs]
    for _ in range(steps):
        tokens, _, *state = session.run(outputs, {names.token_input: tokens, **dict(zip(names.state_inputs, state))})
    events = json.loads(Path(session.end_profiling()).read_text())
    kernel_us: Counter = Counter()
    providers_by_node: dict[str, str] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            kernel_us[args.get("op_name", "?")] += event.get("dur", 0)
            providers_by_node[event["name"][: -len("_kernel_time")]] = args.get("provider", "?")
    on_cpu = sorted(name for name, provider in providers_by_node.items() if provider == "CPUExecutionProvider")
    return {"kernel_us_per_step": {op: round(us / steps, 1) for op, us in kernel_us.most_common()},
            "nodes": len(providers_by_node), "nodes_on_cpu": on_cpu if device != "cpu" else [],
            "memcpy_nodes": sorted(n for n in providers_by_node if "Memcpy" in n),
            "placement_log": placement_log(loaded.decoder_path, providers)}


def cuda_graph_step(bundle: Path, batch: int, steps: int) -> dict[str, float]:
    """ms per greedy step at ``batch`` on bound device buffers, plain and replayed as a CUDA graph (one
    graph per binding: ONNX Runtime's gpu_graph_id run option)."""
    import onnxruntime as ort

    from capkit.runtime import load_bundle
    from capkit.runtime.onnx_inference import BoundGreedySteps, OnnxInference

    loaded = load_bundle(bundle)
    names = loaded.manifest.decoder
    crop = loaded.manifest.preprocess.crop
    state = OnnxInference(loaded, device="cuda").encode(np.zeros((batch, 3, crop, crop), np.float32))
    result = {}
    for label, provider_options in (("plain", {}), ("cuda graph", {"enable_cuda_graph": "1"})):
        session = ort.InferenceSession(str(loaded.decoder_path),
                                       providers=[("CUDAExecutionProvider", {"device_id": 0, **provider_options})])
        steps_ = BoundGreedySteps(session, names.token_input, list(names.state_inputs),
                                  [*names.greedy_outputs, *names.state_outputs], state, "cuda", ortvalues=True)
        for k, binding in enumerate(steps_.bindings):  # bound once, at fixed addresses: each binding its own graph
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(k + 1))
            for _ in range(2):  # capture, then replay
                session.run_with_iobinding(binding, run_options)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            for i in range(steps):
                k = i % 2
                run_options = ort.RunOptions()
                run_options.add_run_config_entry("gpu_graph_id", str(k + 1))
                session.run_with_iobinding(steps_.bindings[k], run_options)
                steps_.sets[1 - k][0][1].numpy()  # the host reads the tokens, as the loop does
            timings.append((time.perf_counter() - started) / steps * 1e3)
        result[label] = statistics.median(timings)
    return result


def conv_search(bundle: Path, batch: int) -> dict[str, dict[str, float]]:
    """The encoder's first run at a new batch size, and a warm run, with cuDNN's exhaustive and heuristic
    convolution search (ms)."""
    import onnxruntime as ort

    from capkit.runtime import load_bundle

    loaded = load_bundle(bundle)
    crop = loaded.manifest.preprocess.crop
    name = loaded.manifest.encoder.image_input
    result = {}
    for search in ("EXHAUSTIVE", "HEURISTIC"):
        session = ort.InferenceSession(str(loaded.encoder_path), providers=[
            ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": search})])
        session.run(None, {name: np.zeros((1, 3, crop, crop), np.float32)})
        images = np.zeros((batch, 3, crop, crop), np.float32)
        started = time.perf_counter()
        session.run(None, {name: images})
        first = time.perf_counter() - started
        warm = []
        for _ in range(5):
            started = time.perf_counter()
            session.run(None, {name: images})
            warm.append(time.perf_counter() - started)
        result[search] = {"first_ms": first * 1e3, "warm_ms": statistics.median(warm) * 1e3}
    return result


def parity(found: list[Target], pixels: np.ndarray, vocab: Any, max_length: int) -> dict[str, str]:
    """Greedy captions of each ONNX target on the device against its own bundle on the CPU."""
    from capkit.runtime.decoding import DecodingOptions, decode
    from capkit.runtime.onnx_inference import OnnxInference

    options = DecodingOptions(max_length=max_length)
    result = {}
    for target in found:
        if target.bundle is None:
            continue
        cpu = decode(OnnxInference(target.bundle, device="cpu"), pixels, options, vocab)
        device = decode(target.inference, pixels, options, vocab)
        result[target.name] = f"{sum(a.tokens == b.tokens for a, b in zip(cpu, device))}/{len(pixels)}"
    return result


# -- the run ------------------------------------------------------------------------------------------------------
def measure(device: str, size_name: str, rounds: int, work: Path) -> dict[str, Any]:
    """Every measurement above; a step that fails records its error and the others still run."""
    from capkit.bench.images import synthetic_photos
    from capkit.export.checks import sample_images
    from capkit.runtime import load_bundle

    size = SIZES[size_name]
    paths = build(work, size, say)
    manifest = load_bundle(paths["fp32"]).manifest
    vocab, spec = manifest.vocab, manifest.preprocess
    pixels = sample_images(spec)[:PARITY_IMAGES]  # (32, 3, crop, crop)
    found = targets(paths, device)
    report: dict[str, Any] = {"device": device, "size": size_name, "rounds": rounds, "machine": machine()}

    def step(key: str, fn: Callable[[], Any]) -> None:
        say(f"measuring: {key}")
        try:
            report[key] = fn()
        except Exception as e:  # one step's failure is reported; the others still run
            report[key] = {"error": f"{type(e).__name__}: {first_line(e, 200)}"}

    step("batches", lambda: (time_batches(found, pixels, vocab, size.max_length, rounds), batch_table(found))[1])
    files = synthetic_photos(work / "photos", count=max(BATCHES))
    step("files", lambda: files_throughput([t for t in found if t.name in FILES_TARGETS], files, spec, vocab,
                                           size.max_length))
    step("profile", lambda: {name: profile_step(paths[name], device, max(BATCHES), size.max_length)
                             for name in ("fp32", "fp32-matmul", "fp16")})
    if device == "cuda":
        step("cuda_graph", lambda: {name: cuda_graph_step(paths[name], max(BATCHES), size.max_length)
                                    for name in ("fp32", "fp32-matmul")})
        step("conv_search", lambda: conv_search(paths["fp32"], 5))
    step("parity", lambda: parity(found, pixels, vocab, size.max_length))
    return report


def machine() -> str:
    import onnxruntime as ort
    import torch

    gpu = f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""
    return (f"{machine_info()['cpu']}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, onnxruntime "
            f"{ort.__version__} ({', '.join(p.replace('ExecutionProvider', '') for p in ort.get_available_providers())})")


def verdicts(report: dict[str, Any]) -> list[str]:
    """Issue #26's targets, and each candidate against today's path, from the batch rows (model images/s)."""
    rows = {(r["target"], r["batch"]): r for r in report.get("batches") or [] if isinstance(r, dict)}

    def rate(target: str, batch: int) -> Optional[float]:
        row = rows.get((target, batch))
        return row["images_per_s"] if row else None

    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    today, eager = "onnx fp32 (today)", "pytorch eager"
    best = max((t for t, b in rows if b == 32 and not t.startswith("ragged") and "fp32" in t),
               key=lambda t: rate(t, 32) or 0, default=today)
    lines = [f"- images/s at batch 32, ONNX fp32 today against PyTorch eager: {ratio(rate(today, 32), rate(eager, 32))}; "
             f"the best fp32 target ({best}): {ratio(rate(best, 32), rate(eager, 32))} (target: 2x)",
             f"- batch-1 caption (encoder and loop), PyTorch eager's time over ONNX fp32's: "
             f"{ratio(rate(today, 1), rate(eager, 1))} (target: 1.5x)",
             f"- fp16 against fp32, images/s at batch 32: {ratio(rate('onnx fp16 (today)', 32), rate(today, 32))} "
             "(target: at least 1x)"]
    for target in sorted({t for t, _ in rows} - {today, eager}):
        base = "ragged: onnx fp32 (today)" if target.startswith("ragged") else today
        if target != base and "eager" not in target:
            lines.append(f"- {target} against {base}: images/s " + ", ".join(
                f"b{b} {ratio(rate(target, b), rate(base, b))}" for b in BATCHES))
    return lines


def render(report: dict[str, Any]) -> str:
    """The report as the marked section of docs/cuda.md."""
    lines = [MARK_START, "<!-- written by reports/cuda_throughput.py; edit the script, not this section -->",
             f"Device {report['device']}, model {report['size']}: {report.get('machine', '')}. Median of "
             f"{report['rounds']} rounds after one not recorded. images/s here are the model's, from preprocessed "
             "images: the encoder and the decode loop.", "", *verdicts(report), ""]
    batches = report.get("batches")
    if isinstance(batches, list):
        lines += ["| target | batch | encoder ms | caption ms (encoder + loop) | step ms | steps | selects | images/s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['target']} | {r['batch']} | {r['encoder_ms']:.2f} | {r['caption_ms']:.2f} | {r['step_ms']:.3f} "
                  f"| {r['steps']:g} | {r['selects']:g} | {r['images_per_s']:.1f} |" for r in batches]
    for key, title in (("files", "From image files, batch 32 (preprocessing in the captioning thread)"),
                       ("profile", "ONNX Runtime's profile of the step graph, batch 32 (kernel µs a step)"),
                       ("cuda_graph", "The step graph on bound buffers, plain and as a CUDA graph (ms a step)"),
                       ("conv_search", "The encoder's first run at batch 5, and warm (ms)"),
                       ("parity", "Greedy captions on the device equal to the CPU's")):
        if key in report:
            lines += ["", f"{title}:", "", *_render_block(key, report[key], report["device"])]
    return "\n".join(lines + [MARK_END])


def _render_block(key: str, value: Any, device: str) -> list[str]:
    if not isinstance(value, dict) or "error" in value:
        return [f"- {value}"]
    if key == "profile":  # on the CPU every node is on the CPU provider: only the count is said
        return [f"- {graph}: " + ", ".join(f"{op} {us:g}" for op, us in list(found["kernel_us_per_step"].items())[:8])
                + f"; {found['nodes']} nodes" + ("" if device == "cpu" else
                                                 f", on the CPU provider: {', '.join(found['nodes_on_cpu']) or 'none'}; "
                                                 f"Memcpy: {', '.join(found['memcpy_nodes']) or 'none'}")
                for graph, found in value.items()] + [
            f"- {graph}, ONNX Runtime's verbose log at session creation: " + (" / ".join(found["placement_log"][:4])
                                                                              or "no placement line")
            for graph, found in value.items() if "placement_log" in found]
    return [f"- {name}: {_plain(figure)}" for name, figure in value.items()]


def _plain(figure: Any) -> str:
    if isinstance(figure, float):
        return f"{figure:.3g}"
    if isinstance(figure, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in figure.items())
    return str(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU (the test suite's mode)")
    parser.add_argument("--size", choices=sorted(SIZES), default="seed", help="the model [default: seed]")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the batch figures [default: 5]")
    parser.add_argument("--work", type=Path, default=WORK, help="where the checkpoints, bundles and photos go "
                        "[default: reports/.cache/cuda-throughput]")
    args, started, measured = start_report(parser, PAGE, WORK)
    if measured is None:
        import torch

        device = "cpu" if args.cpu else "cuda"
        if device == "cuda" and not torch.cuda.is_available():
            say("PyTorch sees no GPU: run with --cpu, or on a machine with one")
            return 1
        measured = measure(device, args.size, args.rounds, args.work / args.size)
        say(f"measured in {time.perf_counter() - started:.0f} s")
    publish(args, PAGE, PAGE_TITLE, MARK_START, MARK_END, render(measured), measured)
    failed = [key for key, value in measured.items() if isinstance(value, dict) and "error" in value]
    if failed:
        say(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
