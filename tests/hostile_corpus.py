"""A generated corpus of hostile inputs for ``capkit caption``, each run in a fresh process under a
memory limit, with its peak memory and wall time measured.

Used by tests/test_hostile_corpus.py (every case must hold) and runnable on its own for the
README's reliability counts:

    .venv/bin/python tests/hostile_corpus.py        # builds a tiny random bundle, prints the table

A case holds when the process exits 0, 1 or 2 (never a signal, never the CLI's last-resort status
70), prints no traceback, prints each error as one ``Error:`` line, stays under PEAK_MB of resident
memory and WALL_S seconds, and, where the case puts a good image beside the hostile input, still
prints that image's caption (a result lost otherwise). "Refused cleanly": the hostile input got
its one-line error and a non-zero exit; "captioned": it was a legal input after all (a 16-bit PNG,
an absurd but valid temperature) and got a caption.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

PEAK_MB = 1024  # the bound on one caption process
WALL_S = 30.0
SAFETY_NET_BYTES = 6 << 30  # RLIMIT_AS of each child: a regression fails its case, not the machine
UNEXPECTED_EXIT = 70  # capkit.cli's last-resort status

# The launcher: a bare interpreter that starts the case with an address-space limit and reads its own
# peak memory with wait4 (a child forked from a process with torch loaded would report that process's).
LAUNCHER = r"""
import json, os, resource, subprocess, sys, time
command, limit, timeout = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
started = time.perf_counter()
proc = subprocess.Popen(command, preexec_fn=cap, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
try:
    out, err = proc.communicate(timeout=timeout)
except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"status": proc.returncode, "wall": wall, "peak_mb": usage.ru_maxrss / 1024.0,
                  "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}))
"""


@dataclass
class Case:
    name: str
    group: str  # image | option | manifest
    args: list[str]  # after `capkit caption`
    hostile: bool = True  # False: a legal input that must be captioned
    keeps_good: bool = False  # a good image stands beside the hostile input: its caption must be printed


@dataclass
class Outcome:
    status: int
    wall: float
    peak_mb: float
    stdout: str
    stderr: str
    problems: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.status != 0


def capkit_command() -> list[str]:
    script = Path(sys.executable).with_name("capkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "capkit"]


def run(args: list[str], timeout: float = WALL_S + 30) -> Outcome:
    env = {**os.environ, "CAPKIT_DEBUG": ""}  # warnings too: any stderr line but the error is a problem
    env.pop("CAPKIT_DEBUG")  # the user's view: the last-resort guard answers, with status 70
    command = [*capkit_command(), "caption", *args]
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", LAUNCHER, json.dumps(command), str(SAFETY_NET_BYTES),
                           str(timeout)], capture_output=True, text=True, env=env, timeout=timeout + 60)
    data = json.loads(proc.stdout)
    return Outcome(data["status"], data["wall"], data["peak_mb"], data["stdout"], data["stderr"])


# -- the corpus ---------------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int, rows: int = 1) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` greyscale pixels (only ``rows`` rows of data)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\x00" + b"\x80" * width) * rows
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw, 9)) + \
        _png_chunk(b"IEND", b"")


def strip_png(width: int, height: int) -> bytes:
    """A complete, highly compressible greyscale PNG of width x height (a few KB even for millions of pixels)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    per_chunk = max(1, (1 << 22) // len(row))  # rows compressed together, a few MB at a time
    body = b"".join(compressor.compress(row * min(per_chunk, height - start)) for start in range(0, height, per_chunk))
    body += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def image_cases(root: Path, good: Path) -> list[Case]:
    from PIL import Image

    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {
        "strip-1x1000000.png": strip_png(1_000_000, 1),
        "strip-1000000x1.png": strip_png(1, 1_000_000),
        "tall-2x40000000.png": strip_png(2, 40_000_000),
        "header-100000x100000.png": png_claiming(100_000, 100_000),
        "header-20000x20000.png": png_claiming(20_000, 20_000),
        "header-0x10.png": png_claiming(0, 10),
        "text.jpg": b"this is not an image\n",
        "empty.png": b"",
        "random.webp": os.urandom(4096),
        "wrong-magic.png": b"GIF89a" + os.urandom(200),
    }
    good_bytes = good.read_bytes()
    files["truncated.png"] = good_bytes[: len(good_bytes) // 2]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    jpeg = folder / "photo.jpg"
    Image.new("RGB", (640, 480), (200, 40, 40)).save(jpeg, quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg.read_bytes()[:2000])
    cases = [Case(f"image {name}", "image", [str(good), str(folder / name)], keeps_good=True) for name in [*files,
                                                                                                           "truncated.jpg"]]
    # special files and odd names
    fifo = folder / "fifo.png"
    os.mkfifo(fifo)
    loop = folder / "loop.png"
    os.symlink(loop.name, loop)
    dangling = folder / "dangling.png"
    os.symlink("nowhere.png", dangling)
    (folder / "folder.jpg").mkdir()
    for path in (fifo, loop, dangling, folder / "folder.jpg"):
        cases.append(Case(f"image {path.name} ({'fifo' if path == fifo else 'link' if path.is_symlink() else 'folder'})",
                          "image", [str(good), str(path)], keeps_good=True))
    for name in ("new\nline.png", "tab\tname.png", "ünïcødé.png", "-dash.png"):
        path = folder / name
        shutil.copy(good, path)
        cases.append(Case(f"image named {name!r}", "image", [str(good), str(path)], hostile=False, keeps_good=True))
    # legal but unusual images: must be captioned
    unusual = {
        "grey16.png": Image.new("I;16", (40, 30), 40000),
        "cmyk.jpg": Image.new("CMYK", (40, 30), (10, 200, 30, 0)),
        "rgba.png": Image.new("RGBA", (40, 30), (10, 200, 30, 100)),
        "palette.gif": Image.new("P", (40, 30), 3),
        "one-pixel.png": Image.new("RGB", (1, 1), (9, 9, 9)),
        "big-7000x7000.png": Image.new("RGB", (7000, 7000), (30, 90, 150)),
    }
    for name, img in unusual.items():
        img.save(folder / name)
        cases.append(Case(f"image {name}", "image", [str(good), str(folder / name)], hostile=False, keeps_good=True))
    frames = [Image.new("P", (32, 32), i % 200) for i in range(300)]
    frames[0].save(folder / "animated-300.gif", save_all=True, append_images=frames[1:])
    cases.append(Case("image animated-300.gif", "image", [str(good), str(folder / "animated-300.gif")], hostile=False,
                      keeps_good=True))
    return cases


def option_cases(good: Path) -> list[Case]:
    bad = {
        "--max-length 1000000000": ["--max-length", "1000000000"], "--max-length 2**70": ["--max-length", str(2 ** 70)],
        "--max-length -1": ["--max-length", "-1"], "--beam 1000000": ["--beam", "1000000"], "--beam 0": ["--beam", "0"],
        "--threads 1000000": ["--threads", "1000000"], "--threads 0": ["--threads", "0"],
        "--batch-size 1000000000": ["--batch-size", "1000000000"], "--temp -1": ["--temp", "-1"],
        "--temp nan": ["--temp", "nan"], "--temp inf": ["--temp", "inf"], "--top-p 0": ["--top-p", "0"],
        "--top-p 2": ["--top-p", "2"], "--top-k -5": ["--top-k", "-5"], "--seed -1": ["--seed", "-1"],
        "--beam 3 --temp 1": ["--beam", "3", "--temp", "1"], "--temp hot": ["--temp", "hot"],
        "--device tpu": ["--device", "tpu"], "--beam 10**330": ["--beam", str(10 ** 330)],
        "--max-length 10**330": ["--max-length", str(10 ** 330)], "--batch-size 10**330": ["--batch-size", str(10 ** 330)],
    }
    legal = {
        "--temp 1e-320": ["--temp", "1e-320"], "--temp 1e308": ["--temp", "1e308"], "--top-p 1e-300":
            ["--temp", "1", "--top-p", "1e-300"], "--top-k 10**12": ["--temp", "1", "--top-k", str(10 ** 12)],
        "--seed 2**200": ["--temp", "1", "--seed", str(2 ** 200)], "--beam 64": ["--beam", "64"],
        "--max-length 512": ["--max-length", "512"],
    }
    return ([Case(f"option {name}", "option", [str(good), *args]) for name, args in bad.items()]
            + [Case(f"option {name}", "option", [str(good), *args], hostile=False, keeps_good=False)
               for name, args in legal.items()])


def manifest_cases(root: Path, bundle: Path, good: Path) -> list[Case]:
    base = json.loads((bundle / "capkit.json").read_text())
    edits = {
        "max_length 10**9": lambda m: m.update(max_length=10 ** 9),
        "max_length 2.5": lambda m: m.update(max_length=2.5),
        "resize 10**6": lambda m: m["preprocess"].update(resize=10 ** 6),
        "crop 10**6": lambda m: m["preprocess"].update(crop=10 ** 6, resize=10 ** 6),
        "crop '64'": lambda m: m["preprocess"].update(crop="64"),
        "std 0": lambda m: m["preprocess"].update(std=[0.2, 0.0, 0.2]),
        "mean of 2": lambda m: m["preprocess"].update(mean=[0.5, 0.5]),
        "format_version 1.0": lambda m: m.update(format_version=1.0),
        "format_version true": lambda m: m.update(format_version=True),
        "sha256 12": lambda m: m["graphs"]["encoder"].update(sha256=12),
        "file 5": lambda m: m["graphs"]["encoder"].update(file=5),
        "file with NUL": lambda m: m["graphs"]["encoder"].update(file="enc\x00oder.onnx"),
        "file ../x": lambda m: m["graphs"]["encoder"].update(file="../encoder.onnx"),
        "vocab short": lambda m: m.update(vocab=m["vocab"][:-1]),
        "vocab long": lambda m: m.update(vocab=[*m["vocab"], "zebra"]),
        "decoding beam 10**6": lambda m: m.update(decoding={"beam": 10 ** 6}),
        "decoding unknown": lambda m: m.update(decoding={"beams": 2}),
    }
    documents = {"a JSON array": "[1, 2]", "a JSON string": '"bundle"', "null": "null",
                 "nested 100000": "[" * 100_000 + "]" * 100_000, "not JSON": "{capkit"}
    cases = []
    for i, (name, edit) in enumerate([*edits.items(), *documents.items()]):
        folder = root / "manifests" / f"m{i:02d}"
        shutil.copytree(bundle, folder)
        if name in documents:
            (folder / "capkit.json").write_text(documents[name])
        else:
            manifest = json.loads(json.dumps(base))
            edit(manifest)
            (folder / "capkit.json").write_text(json.dumps(manifest))
        cases.append(Case(f"manifest {name}", "manifest", [str(good), "--model", str(folder)]))
    fifo_bundle = root / "manifests" / "fifo"
    shutil.copytree(bundle, fifo_bundle)
    (fifo_bundle / "capkit.json").unlink()
    os.mkfifo(fifo_bundle / "capkit.json")
    cases.append(Case("manifest is a FIFO", "manifest", [str(good), "--model", str(fifo_bundle)]))
    return cases


def corpus(root: Path, bundle: Path, good: Path) -> list[Case]:
    return [*image_cases(root, good), *option_cases(good), *manifest_cases(root, bundle, good)]


# -- judging ----------------------------------------------------------------------------------------------------------
def judge(case: Case, outcome: Outcome, good_line: str, bundle: Path) -> Outcome:
    """Fills ``outcome.problems``: every way the case broke a guarantee."""
    p = outcome.problems
    if outcome.status not in (0, 1, 2):
        p.append(f"exit status {outcome.status}" + (" (the last-resort guard)" if outcome.status == UNEXPECTED_EXIT
                                                    else ""))
    if "Traceback" in outcome.stderr + outcome.stdout:
        p.append("traceback")
    errors = [line for line in outcome.stderr.splitlines() if line.strip() and not line.startswith("Warning:")]
    if any(not line.startswith("Error: ") for line in errors):
        p.append(f"stderr lines that are not one-line errors: {errors[:3]}")
    if outcome.peak_mb > PEAK_MB:
        p.append(f"peak memory {outcome.peak_mb:.0f} MB > {PEAK_MB} MB")
    if outcome.wall > WALL_S:
        p.append(f"wall time {outcome.wall:.1f} s > {WALL_S} s")
    if case.hostile and outcome.status == 0:
        p.append("accepted a hostile input (exit 0)")
    if not case.hostile and outcome.status != 0:
        p.append(f"refused a legal input: {errors[:1]}")
    if case.keeps_good and good_line not in outcome.stdout.splitlines():
        p.append("the good image's caption is missing (a result lost)")
    return outcome


def tiny_bundle(folder: Path) -> Path:
    """A random-weight bundle of the smallest model (resnet18, 32x32 inputs, 30 words); needs torch."""
    import torch

    from capkit.export import export_model
    from capkit.models import CaptionModel, CaptionModelConfig
    from capkit.runtime.preprocess import PreprocessSpec
    from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

    torch.manual_seed(0)
    vocab = Vocabulary(SPECIAL_TOKENS + tuple(f"w{i}" for i in range(26)))
    model = CaptionModel(CaptionModelConfig(vocab_size=len(vocab), encoder="resnet18", embed_dim=16, hidden_dim=32))
    return export_model(model.eval(), vocab, PreprocessSpec(resize=32, crop=32), 8, folder).folder


def good_image(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "good.png"
    Image.new("RGB", (48, 40), (20, 160, 90)).save(path)
    return path


def run_corpus(root: Path, bundle: Path, workers: int = 2) -> tuple[list[Case], list[Outcome]]:
    """Every case in its own process (``workers`` at a time); outcomes in the order of the cases."""
    from concurrent.futures import ThreadPoolExecutor

    good = good_image(root / "good")
    reference = run([str(good), "--model", str(bundle), "--device", "cpu", "--json"])
    if reference.status != 0:
        raise RuntimeError(f"the good image does not caption: {reference.stderr}")
    good_line = reference.stdout.splitlines()[0]
    cases = corpus(root, bundle, good)

    def attempt(case: Case) -> Outcome:
        args = case.args + ([] if "--model" in case.args else ["--model", str(bundle)])
        outcome = run([*args, "--device", "cpu", "--json"] if "--device" not in args else [*args, "--json"])
        return judge(case, outcome, good_line, bundle)

    with ThreadPoolExecutor(workers) as pool:
        return cases, list(pool.map(attempt, cases))


def summary(cases: list[Case], outcomes: list[Outcome]) -> dict[str, object]:
    lost = sum("a result lost" in " ".join(o.problems) for o in outcomes)
    return {
        "tried": len(cases),
        "hostile": sum(c.hostile for c in cases),
        "refused cleanly": sum(c.hostile and o.refused and not o.problems for c, o in zip(cases, outcomes)),
        "legal, captioned": sum(not c.hostile and not o.problems for c, o in zip(cases, outcomes)),
        "results lost": lost,
        "broken guarantees": sum(bool(o.problems) for o in outcomes),
        "max peak MB": round(max(o.peak_mb for o in outcomes)),
        "max wall s": round(max(o.wall for o in outcomes), 1),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="capkit-hostile-") as tmp:
        root = Path(tmp)
        bundle = tiny_bundle(root / "bundle")
        started = time.perf_counter()
        cases, outcomes = run_corpus(root, bundle)
        for case, outcome in zip(cases, outcomes):
            mark = "ok " if not outcome.problems else "BAD"
            print(f"{mark} {case.name!r:40} exit {outcome.status:>3}  {outcome.peak_mb:6.0f} MB  {outcome.wall:5.1f} s  "
                  + ("; ".join(outcome.problems) or (outcome.stderr.strip().splitlines() or [""])[0][:90]))
        print(json.dumps(summary(cases, outcomes)))
        print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
