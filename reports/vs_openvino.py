#!/usr/bin/env python
"""OpenVINO beside ONNX Runtime on capkit's own encoder graphs, in one process: the seed configuration's int8 encoder
(ResNet-50, 224x224) in both, its fp32 encoder in ONNX Runtime, in OpenVINO forced to f32 and in OpenVINO's default
on a CPU with bf16 (bf16), with what each precision costs in accuracy.

    .venv/bin/python reports/seed_config.py     # first: the seed configuration's bundles (reports/.cache/seed-config)
    pip install openvino                        # a benchmark-only comparator; capkit never imports it
    .venv/bin/python reports/vs_openvino.py        # writes docs/openvino.md
    .venv/bin/python reports/vs_openvino.py --rounds 4 --print
    .venv/bin/python reports/vs_openvino.py --provider-python ov-env/bin/python   # + ONNX Runtime's OpenVINO provider

--provider-python: a Python whose onnxruntime is onnxruntime-openvino and which imports capkit (``pip install
onnxruntime-openvino pillow`` and ``pip install --no-deps -e .`` in a virtual environment of its own: it cannot share
one with onnxruntime-gpu). The report then times capkit's ``device="openvino"`` (the encoder on ONNX Runtime's OpenVINO
execution provider) in that process, in turns with the others (reports/openvino_provider_worker.py).

Timing: each graph in each runtime is run in blocks of --block runs, the blocks of all of them taken in turn for
--rounds rounds (a short pause before each block, so that no runtime's idle threads are still spinning on the cores
when the next one starts); a row's figure is the median of all its runs. ONNX Runtime runs with the session that
capkit's runtime builds (2 intra-op threads, idle threads spinning 200 us); OpenVINO with its latency hint, 2
inference threads, its threads not pinned to cores (pinned, the int8 graph took up to 1.7x as long here). Accuracy: each encoder's initial decoder
state against ONNX Runtime fp32's on the export's 32 parity images, and the greedy captions that the fp32 step graph
decodes from it (equal to fp32's); on the trained demo bundle (runs/latest/bundle, a ResNet-18 at 64 px) also greedy
BLEU-4 and fact accuracy on its test split, with each runtime's encoder in the Captioner's decode loop.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from capkit.reports.common import DOCS, REPO, publish, say, shown_path, start_report
from capkit.reports.openvino_provider_worker import time_block
from capkit.runtime.bundle import Bundle, load_bundle

WORK = REPO / "reports" / ".cache" / "openvino"
PAGE = DOCS / "openvino.md"
PAGE_TITLE = "OpenVINO beside ONNX Runtime, on capkit's encoder graphs"
MARK_START, MARK_END = "<!-- openvino:start -->", "<!-- openvino:end -->"
SEED = REPO / "reports" / ".cache" / "seed-config"
DEMO = REPO / "runs" / "latest" / "bundle"
DEMO_INT8 = SEED / "trained" / "bundle-int8"  # the demo run's int8 bundle, which reports/seed_config.py exports
THREADS = 2
Encoder = Callable[[np.ndarray], list[np.ndarray]]  # images (B, 3, H, W) -> the state, in the manifest's order
PROVIDER_ROW = "ONNX Runtime int8, OpenVINO provider"  # capkit's device="openvino", with --provider-python


def ort_encoder(bundle: Bundle) -> Encoder:
    """The encoder as capkit's runtime runs it (its session options, CPU)."""
    import onnxruntime as ort

    from capkit.runtime.providers import session_options

    session = ort.InferenceSession(str(bundle.encoder_path), session_options(THREADS, "all"),
                                   providers=["CPUExecutionProvider"])
    names, image = list(bundle.manifest.encoder.state_outputs), bundle.manifest.encoder.image_input
    return lambda images: session.run(names, {image: images})


def ov_encoder(bundle: Bundle, precision: Optional[str]) -> Encoder:
    """The same graph in OpenVINO (latency hint, THREADS threads); ``precision``: its inference precision hint
    (None: OpenVINO's default for this CPU)."""
    # ENABLE_CPU_PINNING off: pinned (OpenVINO's default), its threads made the int8 graph up to 1.7x slower in this
    # process (12.9 against 21.4 ms in one measurement), the calling thread waiting for a core a pinned thread holds
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": THREADS,
                              "ENABLE_CPU_PINNING": False}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov_core().compile_model(str(bundle.encoder_path), "CPU", config)
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in bundle.manifest.encoder.state_outputs]

    def encode(images: np.ndarray) -> list[np.ndarray]:
        answer = request.infer({0: images})  # one inference, every output
        return [np.array(answer[o]) for o in outputs]

    return encode


@functools.lru_cache(maxsize=None)
def ov_core() -> Any:
    """One OpenVINO Core for every model: each Core has its own threads, which would contend for the cores."""
    import openvino as ov

    return ov.Core()


def ov_default_precision() -> str:
    """OpenVINO's default inference precision on this CPU ("bf16" where the CPU has bf16, else "f32")."""
    hint = ov_core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)


class ProviderEncoder:
    """capkit's ``device="openvino"`` encoder, in another Python (``python``, see --provider-python): callable like
    an :data:`Encoder`, and :meth:`block` times runs in that process, so the pipe is not in the figure."""

    WORKER = REPO / "reports" / "openvino_provider_worker.py"

    def __init__(self, python: str, bundle: Bundle) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="capkit-ov-provider-")
        self.process = subprocess.Popen([python, str(self.WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=REPO)
        loaded = self.ask({"op": "load", "bundle": str(bundle.folder), "threads": THREADS})
        if loaded["providers"][0] != "OpenVINOExecutionProvider":
            raise SystemExit(f"{python}: the encoder did not get the OpenVINO provider ({loaded['providers']})")
        self.ort = loaded["ort"]

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the OpenVINO provider's process ended (exit status {self.process.wait()})")
        return json.loads(line)

    def _saved(self, images: np.ndarray) -> str:
        path = os.path.join(self.folder.name, "images.npy")
        np.save(path, np.ascontiguousarray(images, dtype=np.float32))
        return path

    def block(self, image: np.ndarray, runs: int) -> list[float]:
        return self.ask({"op": "block", "image": self._saved(image), "runs": runs})["ms"]

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        out = os.path.join(self.folder.name, "state.npz")
        count = self.ask({"op": "encode", "images": self._saved(images), "out": out})["outputs"]
        with np.load(out) as state:
            return [state[f"arr_{i}"] for i in range(count)]


def variants(seed: Path, provider_python: Optional[str] = None) -> dict[str, tuple[Bundle, Encoder]]:
    fp32, int8 = load_bundle(seed / "bundle"), load_bundle(seed / "bundle-int8")
    default = ov_default_precision()
    chosen: dict[str, tuple[Bundle, Encoder]] = {"ONNX Runtime int8": (int8, ort_encoder(int8)),
                                                 f"OpenVINO int8 (default precision, {default})": (int8, ov_encoder(int8, None))}
    if provider_python:
        chosen[PROVIDER_ROW] = (int8, ProviderEncoder(provider_python, int8))
    chosen.update({"ONNX Runtime fp32": (fp32, ort_encoder(fp32)),
                   "OpenVINO fp32 (forced f32)": (fp32, ov_encoder(fp32, "f32")),
                   "OpenVINO fp32 graph in bf16": (fp32, ov_encoder(fp32, "bf16"))})
    return chosen


def timings(encoders: dict[str, Encoder], image: np.ndarray, rounds: int, block: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[float]] = {name: [] for name in encoders}
    for round_ in range(rounds):
        for name, encode in encoders.items():
            time.sleep(0.05)  # the last runtime's idle threads stop spinning
            # ProviderEncoder: timed in its own process, by the same time_block
            runs[name] += (encode.block(image, block) if isinstance(encode, ProviderEncoder)
                           else time_block(lambda: encode(image), block))
        say(f"  round {round_ + 1}/{rounds}: " + ", ".join(f"{n.split(' (')[0]} {statistics.median(v):.1f}"
                                                          for n, v in runs.items()))
    return {name: {"median_ms": statistics.median(v), "p10_ms": float(np.percentile(v, 10)),
                   "p90_ms": float(np.percentile(v, 90)), "runs": len(v)} for name, v in runs.items()}


def ort_profile(bundle: Bundle, image: np.ndarray, runs: int = 20) -> dict[str, Any]:
    """ONNX Runtime's own profile of the encoder (capkit's session, profiling on): milliseconds per run and node count
    of each operator type of the optimised graph, largest first, and the run's total."""
    import json

    import onnxruntime as ort

    from capkit.runtime.providers import session_options

    options = session_options(THREADS, "all")
    options.enable_profiling = True
    options.profile_file_prefix = str(WORK / "ort-profile")
    session = ort.InferenceSession(str(bundle.encoder_path), options, providers=["CPUExecutionProvider"])
    feed = {bundle.manifest.encoder.image_input: image}
    for _ in range(5):
        session.run(None, feed)
    session.end_profiling()  # the warm-up's events go to a file of their own
    options.profile_file_prefix = str(WORK / "ort-profile-timed")
    session = ort.InferenceSession(str(bundle.encoder_path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    spent: dict[str, float] = {}
    nodes: dict[str, int] = {}
    total = 0.0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            spent[op] = spent.get(op, 0.0) + event["dur"] / 1000
            nodes[op] = nodes.get(op, 0) + 1
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            total += event["dur"] / 1000
    count = runs + 1
    ops = sorted(spent, key=spent.get, reverse=True)
    return {"run_ms": total / count, "ops": [{"op": op, "ms": spent[op] / count, "nodes": nodes[op] // count}
                                             for op in ops]}


class EncoderSwap:
    """An Inference whose encoder is another runtime's, the rest (the fp32 step graph) capkit's own."""

    def __init__(self, base: Any, encode: Encoder) -> None:
        self.base, self._encode, self.device = base, encode, "cpu"
        if hasattr(base, "greedy_step"):
            self.greedy_step = base.greedy_step

    def encode(self, images: np.ndarray) -> tuple:
        return tuple(self._encode(np.ascontiguousarray(images, dtype=np.float32)))

    def step(self, tokens: np.ndarray, state: Any) -> Any:
        return self.base.step(tokens, state)

    def select(self, state: Any, rows: np.ndarray) -> Any:
        return self.base.select(state, rows)


def swapped(fp32: Bundle, encode: Encoder) -> Any:
    from capkit.runtime.captioner import Captioner

    base = Captioner(fp32, device="cpu", threads=THREADS)
    return Captioner.from_inference(EncoderSwap(base.inference, encode), base.vocab, base.spec, base.max_length, fp32)


def parity(fp32: Bundle, chosen: dict[str, tuple[Bundle, Encoder]]) -> dict[str, dict[str, Any]]:
    """Each encoder's state error against ONNX Runtime fp32 on the parity images, and its greedy captions (the fp32
    step graph decoding from its state) equal to fp32's."""
    from capkit.export.checks import sample_images

    images = sample_images(fp32.manifest.preprocess)  # (32, 3, H, W), the export's parity images
    reference = ort_encoder(fp32)(images)
    expected = [c.tokens for c in swapped(fp32, ort_encoder(fp32)).caption_pixels(images, [None] * len(images))]
    out = {}
    for name, (_, encode) in chosen.items():
        state = encode(images)
        tokens = [c.tokens for c in swapped(fp32, encode).caption_pixels(images, [None] * len(images))]
        out[name] = {"state_max_abs": max(float(np.max(np.abs(a - b))) for a, b in zip(state, reference)),
                     "greedy_equal": sum(a == b for a, b in zip(tokens, expected)), "images": len(images)}
    return out


def demo_scores(demo: Path, int8: Path, provider_python: Optional[str] = None) -> dict[str, Any]:
    """Greedy BLEU-4 and fact accuracy of the trained demo bundle with each encoder, on its test split: its fp32
    encoder in ONNX Runtime, OpenVINO f32 and bf16, its int8 encoder (``int8``, the same run's int8 bundle) in ONNX
    Runtime and OpenVINO; always the fp32 step graph."""
    from capkit.runtime.captioner import Captioner
    from capkit.training.datasets import load_dataset
    from capkit.training.evaluate import evaluate
    from capkit.training.synthetic import fact_check

    from capkit.training.checkpoint import load_checkpoint, resolve_checkpoint

    bundle = load_bundle(demo)
    source = load_checkpoint(resolve_checkpoint(str(demo.parent))).get("data_source")  # a bundle does not say
    if not source or not os.path.isdir(source):
        raise SystemExit(f"{shown_path(demo.parent)} does not record its synthetic dataset: run scripts/demo.sh")
    records = load_dataset(source, None)["test"]
    facts = fact_check(source, "test")
    quantized = load_bundle(int8)
    encoders = {"ONNX Runtime fp32": ort_encoder(bundle), "OpenVINO f32": ov_encoder(bundle, "f32"),
                "OpenVINO bf16": ov_encoder(bundle, "bf16"), "ONNX Runtime int8": ort_encoder(quantized),
                "OpenVINO int8": ov_encoder(quantized, None)}
    if provider_python:
        encoders[PROVIDER_ROW] = ProviderEncoder(provider_python, quantized)
    out = {"data": source, "images": len(records)}
    for name, encode in encoders.items():
        captioner: Captioner = swapped(bundle, encode)
        result = evaluate(captioner, records, [0.0], progress=False, ceiling=False, facts=facts)[0]
        out[name] = {"bleu4": result.bleu4, "facts": result.facts["exact"] if result.facts else None}
        say(f"  demo, {name}: BLEU-4 {result.bleu4:.3f}")
    return out


def render(measured: dict[str, Any]) -> str:
    rows, accuracy, demo = measured["timings"], measured["parity"], measured["demo"]
    ort_int8 = rows["ONNX Runtime int8"]["median_ms"]
    ov_int8 = next(v["median_ms"] for k, v in rows.items() if k.startswith("OpenVINO int8"))
    ov_bf16_demo = next((k for k in demo if "bf16" in k), None)
    lines = [MARK_START, "```", measured["command"], "```", "",
             f"The seed configuration's encoder (ResNet-50 + LSTM 300/512, 224x224, random weights), batch 1, "
             f"{measured['threads']} threads, this machine ({measured['cores']} cores, {measured['cpu']}); ONNX Runtime "
             f"{measured['ort']}, OpenVINO {measured['openvino']}"
             + (f", onnxruntime-openvino {measured['provider_ort']} (capkit's device=\"openvino\", in its own process)"
                if measured.get("provider_ort") else "") + f"; {measured['rounds']} rounds of blocks of "
             f"{measured['block']} runs taken in turn. State error: max abs against ONNX Runtime fp32 on the export's "
             f"{next(iter(accuracy.values()))['images']} parity images; greedy equal: captions equal to fp32's "
             "(the fp32 step graph decoding from each state).", "",
             "| encoder | median ms | p10 - p90 | x ONNX Runtime int8 | state error | greedy equal |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        acc = accuracy[name]
        lines.append(f"| {name} | {row['median_ms']:.2f} | {row['p10_ms']:.2f} - {row['p90_ms']:.2f} | "
                     f"{row['median_ms'] / ort_int8:.2f}x | {acc['state_max_abs']:.1e} | "
                     f"{acc['greedy_equal']}/{acc['images']} |")
    lines += ["", f"The trained demo bundle ({demo['images']} test images, greedy; ResNet-18 at 64 px), each encoder in "
                  "the Captioner's decode loop with the fp32 step graph (int8: the same run's int8 encoder):", "",
              "| encoder | BLEU-4 | facts exactly right |", "| --- | ---: | ---: |"]
    for name in [k for k in demo if k not in ("data", "images")]:
        facts = demo[name]["facts"]
        lines.append(f"| {name} | {demo[name]['bleu4']:.4f} | {'-' if facts is None else f'{facts:.1%}'} |")
    profile = measured["profile"]
    lines += ["", f"Where ONNX Runtime's int8 encoder spends a run ({profile['run_ms']:.2f} ms with profiling on; its "
                  "optimised graph, operator by operator):", "", "| operator | nodes | ms a run | share |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {op['op']} | {op['nodes']} | {op['ms']:.3f} | {op['ms'] / profile['run_ms']:.1%} |"
              for op in profile["ops"] if op["ms"] >= 0.01]
    if measured.get("captions"):
        times = measured["captions"]
        lines += ["", f"A whole greedy caption of the seed configuration's int8 bundle by capkit's runtime, in the "
                      f"onnxruntime-openvino {measured['provider_ort']} environment, the two devices in turns: "
                      f"`device=\"cpu\"` {times['cpu']:.2f} ms, `device=\"openvino\"` {times['openvino']:.2f} ms "
                      f"({times['openvino'] / times['cpu']:.2f}x)."]
    ratio = ort_int8 / ov_int8
    lines += ["", f"- Goal: ONNX Runtime's int8 encoder at most 1.0x OpenVINO's on the same graph: {ratio:.3f}x "
                  f"({ort_int8:.2f} against {ov_int8:.2f} ms) on its CPU provider (capkit's default) - "
                  f"{'met' if ratio <= 1.0 else 'NOT met'}."]
    if PROVIDER_ROW in rows:
        mine = rows[PROVIDER_ROW]["median_ms"]
        lines.append(f"- The same with capkit's `device=\"openvino\"` (ONNX Runtime's OpenVINO provider): {mine / ov_int8:.3f}x "
                     f"({mine:.2f} against {ov_int8:.2f} ms) - {'met' if mine <= ov_int8 else 'NOT met'}.")
    if ov_bf16_demo:
        delta = demo[ov_bf16_demo]["bleu4"] - demo["ONNX Runtime fp32"]["bleu4"]
        lines.append(f"- bf16 (OpenVINO) against fp32 on the demo: BLEU-4 {delta:+.4f}; parity images greedy "
                     f"{accuracy['OpenVINO fp32 graph in bf16']['greedy_equal']}/"
                     f"{accuracy['OpenVINO fp32 graph in bf16']['images']}.")
    lines += ["", MARK_END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of blocks, every encoder in turn")
    parser.add_argument("--block", type=int, default=10, help="timed runs in a block")
    parser.add_argument("--provider-python", default=None, metavar="PYTHON",
                        help="also time capkit's device=\"openvino\" in this Python (onnxruntime-openvino; see above)")
    args, started, measured = start_report(parser, PAGE, WORK)
    if measured is None:
        try:
            import openvino
        except ModuleNotFoundError:
            raise SystemExit("OpenVINO is not installed: pip install openvino (a benchmark-only comparator)") from None
        import onnxruntime

        if not (SEED / "bundle-int8" / "capkit.json").is_file():
            raise SystemExit(f"no seed-configuration bundles in {shown_path(SEED)}: run reports/seed_config.py first")
        chosen = variants(SEED, args.provider_python)
        image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        say(f"timing {len(chosen)} encoders ({args.rounds} rounds)")
        rows = timings({name: encode for name, (_, encode) in chosen.items()}, image, args.rounds, args.block)
        profile = ort_profile(chosen["ONNX Runtime int8"][0], image)
        say("accuracy: parity images")
        accuracy = parity(load_bundle(SEED / "bundle"), chosen)
        say("accuracy: the demo bundle's test split")
        if not (DEMO_INT8 / "capkit.json").is_file():
            raise SystemExit(f"no int8 bundle of the demo run in {shown_path(DEMO_INT8)}: run reports/seed_config.py")
        demo = demo_scores(DEMO, DEMO_INT8, args.provider_python)
        captions = None
        if args.provider_python:
            say("captions: device cpu and openvino, in the onnxruntime-openvino environment")
            captions = chosen[PROVIDER_ROW][1].ask({"op": "captions", "bundle": str(SEED / "bundle-int8"),
                                                    "threads": THREADS, "rounds": 6, "block": args.block})
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
        command = ".venv/bin/python reports/vs_openvino.py" + (" --provider-python OV_ENV/bin/python" if args.provider_python else "")
        measured = {"command": command, "threads": THREADS, "cores": os.cpu_count(),
                    "cpu": cpu, "ort": onnxruntime.__version__, "openvino": openvino.__version__.split("-")[0],
                    "rounds": args.rounds, "block": args.block, "timings": rows, "parity": accuracy, "demo": demo,
                    "profile": profile, "captions": captions, "provider_ort": getattr(chosen.get(PROVIDER_ROW, (None, None))[1], "ort", None),
                    "seconds": time.perf_counter() - started}
    publish(args, PAGE, PAGE_TITLE, MARK_START, MARK_END, render(measured), measured)


if __name__ == "__main__":
    main()
