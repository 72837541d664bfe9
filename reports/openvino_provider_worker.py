#!/usr/bin/env python
"""The encoder of a bundle as capkit's runtime runs it with ``device="openvino"`` (ONNX Runtime's OpenVINO execution
provider), served to reports/vs_openvino.py over stdin and stdout, one JSON line a command. It runs in another Python
environment, one with onnxruntime-openvino in place of onnxruntime-gpu (the two cannot share one), so that the
report can time it in turns with the others.

    {"op": "load", "bundle": DIR, "threads": 2}                 -> {"ort": VERSION, "providers": [...]}
    {"op": "block", "image": NPY, "runs": 10}                   -> {"ms": [...]}  (one untimed run first)
    {"op": "encode", "images": NPY, "out": NPZ}                 -> {"outputs": N}  (the state, in the manifest's order)
    {"op": "captions", "bundle": DIR, "threads": 2, "rounds": 6, "block": 10}
        -> {"cpu": MS, "openvino": MS}  (a greedy caption of one image, Captioner.caption_pixels, with device "cpu" and
           "openvino", in blocks taken in turn; the medians)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np


def time_block(call: Callable[[], Any], runs: int) -> list[float]:
    """``call`` once untimed, then ``runs`` times, each timed (ms); reports/vs_openvino.py times its blocks with it too."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def caption_times(bundle: str, threads: int, rounds: int, block: int) -> dict[str, float]:
    from capkit.runtime import Captioner

    captioners = {device: Captioner(bundle, device=device, threads=threads) for device in ("cpu", "openvino")}
    crop = captioners["cpu"].spec.crop
    pixels = np.random.default_rng(0).standard_normal((1, 3, crop, crop)).astype(np.float32)  # (1, 3, crop, crop)
    runs: dict[str, list[float]] = {device: [] for device in captioners}
    for _ in range(rounds):
        for device, captioner in captioners.items():
            time.sleep(0.05)  # the other's idle threads stop spinning
            runs[device] += time_block(lambda: captioner.caption_pixels(pixels, [None]), block)
    return {device: statistics.median(times) for device, times in runs.items()}


def main() -> None:
    import onnxruntime

    from capkit.runtime.onnx_inference import OnnxInference

    inference = None
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "load":
            inference = OnnxInference(command["bundle"], device="openvino", threads=command["threads"])
            answer = {"ort": onnxruntime.__version__, "providers": inference._encoder.get_providers()}
        elif command["op"] == "block":
            image = np.load(command["image"])
            answer = {"ms": time_block(lambda: inference.encode(image), command["runs"])}
        elif command["op"] == "captions":
            answer = caption_times(command["bundle"], command["threads"], command["rounds"], command["block"])
        else:
            state = inference.encode(np.load(command["images"]))
            np.savez(command["out"], *[np.asarray(s) for s in state])
            answer = {"outputs": len(state)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
