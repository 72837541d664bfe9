#!/usr/bin/env python
"""The HTTP service under load: `capkit serve` on a loopback port, sent one-image requests by `wrk` (or, without it,
an async httpx client) at concurrency 1, 8 and 32, with each batching mode (step, request, none = one at a time),
beside the in-process `Captioner` on the same images; then an overload run (concurrency far above --max-queue, sent by
`hey` where installed, which records each request's status and latency) that must be answered with 429s rather than
growing latency.

    .venv/bin/python reports/serve.py                       # the demo bundle (+ the seed config's int8); docs/serve.md
    .venv/bin/python reports/serve.py --model B --requests 50 --print

Figures per run: images/s (requests answered 200 over the run's wall time), p50/p95/p99 latency of the 200s, and
the batch sizes the server saw (mean rows per encode and per decoding step, from its /metrics). The in-process
figures: `Captioner.caption_batch` over the same image bytes (batch 16) for images/s, and `Captioner.caption` one
at a time for a single caption's latency. Everything runs on this machine: the client competes with the server
for the same cores, as the in-process loop does not. Bounded: at most --requests requests and --seconds seconds a run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a file: the repository's parent makes `capkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capkit.reports.common import (DOCS, REPO, add_report_arguments, capkit, prepare, publish, say,  # noqa: E402
                                   shown_path)

WORK = REPO / "reports" / ".cache" / "serve"
PAGE = DOCS / "serve.md"
PAGE_TITLE = "`capkit serve`: captions over HTTP"
MARK_START, MARK_END = "<!-- serve:start -->", "<!-- serve:end -->"
CONCURRENCY = (1, 8, 32)
MODES = ("step", "request", "none", "request:2")  # --batching MODE, or MODE:N with --workers N
OVERLOAD = (128, 8)  # clients, --max-queue of the overload run
THROUGHPUT_GOAL, LATENCY_GOAL, LATENCY_SLACK_MS = 0.9, 1.2, 2.0  # the issue's: c32 >= 0.9x in-process images/s,
# p99 at c1 <= 1.2x an in-process caption's p99 + 2 ms


def default_models() -> list[Path]:
    """The demo bundle (runs/latest/bundle) and the seed configuration's int8 bundle, those that exist."""
    found = [REPO / "runs" / "latest" / "bundle"]
    seed = REPO / "reports" / ".cache" / "seed-config"
    found += sorted(m.parent for m in seed.rglob("capkit.json") if m.parent.name.endswith("-int8"))[:1] \
        if seed.is_dir() else []
    return [m for m in found if (m / "capkit.json").is_file()]


def photo_paths(work: Path, count: int) -> list[Path]:
    from capkit.bench import synthetic_photos

    folder = work / f"photos-{count}"
    paths = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if len(paths) != count:
        paths = [Path(p) for p in synthetic_photos(folder, count=count, seed=3)]
    return paths


def photos(work: Path, count: int) -> list[bytes]:
    return [p.read_bytes() for p in photo_paths(work, count)]


def percentiles(seconds: list[float]) -> dict[str, Optional[float]]:
    import numpy as np

    if not seconds:
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{q}": float(np.percentile(seconds, q)) * 1000 for q in (50, 95, 99)}


def in_process(model: Path, images: list[bytes], requests: int) -> dict[str, Any]:
    """The Captioner in this process on the same bytes: images/s of caption_batch, latency of caption()."""
    from capkit.runtime.captioner import Captioner

    captioner = Captioner(model, device="cpu")
    captioner.caption(images[0])  # warm
    started = time.perf_counter()
    done = 0
    while done < requests:
        batch = [images[(done + i) % len(images)] for i in range(min(len(images), requests - done))]
        done += len(captioner.caption_batch(batch, batch_size=16))
    rate = done / (time.perf_counter() - started)
    latencies = []
    for i in range(min(requests, 200)):
        t = time.perf_counter()
        captioner.caption(images[i % len(images)])
        latencies.append(time.perf_counter() - t)
    return {"images_per_s": rate, **percentiles(latencies)}


class Server:
    """`capkit serve MODEL --port 0 ARGS` in a child process, ready."""

    def __init__(self, model: Path, *args: str) -> None:
        import httpx

        self.proc = subprocess.Popen([*capkit("serve", str(model), "--port", "0", "--device", "cpu",
                                              "--no-access-log", *args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        found = re.search(r"http://\S+?:(\d+)/", self.proc.stdout.readline())
        if not found:
            self.proc.kill()
            raise SystemExit("capkit serve did not start")
        self.base = f"http://127.0.0.1:{found.group(1)}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=10).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.close()
        raise SystemExit("capkit serve was not ready in 300 s")

    def batch_rows(self) -> dict[str, tuple[float, float]]:
        """Per graph call: (sum of rows, runs) so far, from /metrics."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        rows: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(httpx.get(self.base + "/metrics").text):
            for s in family.samples:
                if s.name in ("capkit_batch_rows_sum", "capkit_batch_rows_count"):
                    rows.setdefault(s.labels["call"], [0.0, 0.0])[s.name.endswith("count")] = s.value
        return {call: (v[0], v[1]) for call, v in rows.items()}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load(base: str, images: list[bytes], concurrency: int, requests: int, seconds: float) -> dict[str, Any]:
    """``requests`` one-image POSTs, ``concurrency`` at a time (each client its own connection); statuses and the
    latency of each."""
    import httpx

    latencies: dict[int, list[float]] = {}
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < deadline:
                data = images[issued % len(images)]
                issued += 1
                started = time.perf_counter()
                try:
                    reply = await client.post("/v1/captions", content=data)
                except httpx.TransportError:
                    errors += 1
                    continue
                latencies.setdefault(reply.status_code, []).append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ok = latencies.get(200, [])
    return {"concurrency": concurrency, "requests": issued, "ok": len(ok), "transport_errors": errors,
            "statuses": {str(k): len(v) for k, v in sorted(latencies.items())}, "wall": wall,
            "images_per_s": len(ok) / wall, **percentiles(ok),
            "p99_429": percentiles(latencies.get(429, []))["p99"]}


WRK_SCRIPT = """-- capkit's load: POST each photo in turn as a raw body; one summary line at the end
local bodies = {}
for i, path in ipairs({%s}) do
  local f = assert(io.open(path, "rb")); bodies[i] = f:read("*a"); f:close()
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/captions", {["Content-Type"] = "application/octet-stream"}, bodies[n %% #bodies + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("CAPKIT %%d %%d %%d %%d %%f %%f %%f\\n", summary.requests, summary.duration, e.status,
                         e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(95),
                         latency:percentile(99)))
end
"""


def load_wrk(base: str, paths: list[Path], concurrency: int, seconds: float) -> dict[str, Any]:
    """wrk (one client thread, ``concurrency`` connections, each sending its next request when answered) for
    ``seconds``: a client in C, so that the server keeps the cores the httpx client would take. Latency over all
    answers (a run with a status error is reported as such)."""
    script = Path(tempfile.mkstemp(prefix="capkit-wrk-", suffix=".lua")[1])
    script.write_text(WRK_SCRIPT % ", ".join(json.dumps(str(p)) for p in paths))
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "120s",
                              "-s", str(script), base], capture_output=True, text=True, check=True).stdout
    finally:
        script.unlink()
    found = re.search(r"^CAPKIT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)$", out, re.M)
    if not found:
        raise SystemExit(f"wrk printed no summary: {out[-500:]}")
    done, micros, bad_status, errors = (int(v) for v in found.groups()[:4])
    p50, p95, p99 = (float(v) / 1000 for v in found.groups()[4:])
    return {"concurrency": concurrency, "requests": done, "ok": done - bad_status, "transport_errors": errors,
            "statuses": {"200": done - bad_status, "other": bad_status}, "wall": micros / 1e6,
            "images_per_s": (done - bad_status) / (micros / 1e6), "p50": p50, "p95": p95, "p99": p99, "client": "wrk"}


def label(spec: str) -> str:
    """A --modes entry as the table names it: "request", or "request x2" (two worker processes)."""
    mode, _, workers = spec.partition(":")
    return f"{mode} x{workers}" if workers else mode


def measure_server(model: Path, images: list[bytes], spec: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs of one server: ``spec`` is a batching mode, or MODE:N for N worker processes (--workers)."""
    mode, _, workers = spec.partition(":")
    server = Server(model, "--batching", mode, *(["--workers", workers] if workers else []))
    runs = []
    try:
        asyncio.run(load(server.base, images, 8, min(args.requests, 32), args.seconds))  # warm connections, caches
        for concurrency in CONCURRENCY:
            before = server.batch_rows()
            if args.client == "wrk":
                run = load_wrk(server.base, photo_paths(args.work, args.images), concurrency, args.wrk_seconds)
            else:
                run = asyncio.run(load(server.base, images, concurrency, args.requests, args.seconds))
            after = server.batch_rows()
            for call, (rows, count) in after.items():
                old_rows, old_count = before.get(call, (0.0, 0.0))
                if count > old_count:
                    run[f"rows_per_{call}"] = (rows - old_rows) / (count - old_count)
            run["mode"] = label(spec)
            step = run.get("rows_per_greedy_step", run.get("rows_per_step", 0))
            say(f"  {label(spec):10} c={concurrency:<3} {run['images_per_s']:7.1f} images/s  p50 {run['p50'] or 0:6.1f} "
                f"p99 {run['p99'] or 0:6.1f} ms  rows/step {step:.1f}")
            runs.append(run)
    finally:
        server.close()
    return runs


def load_hey(base: str, photo: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """hey (``concurrency`` workers, each sending its next request, one photo as the raw body, as soon as the last
    is answered, never waiting for a Retry-After) for ``seconds``; its per-request CSV gives each status's
    latency. A client in Go: it can send far more requests than the server captions without taking the cores."""
    out = subprocess.run(["hey", "-z", f"{max(1, round(seconds))}s", "-c", str(concurrency), "-m", "POST", "-T",
                          "application/octet-stream", "-D", str(photo), "-t", "120", "-o", "csv",
                          base + "/v1/captions"], capture_output=True, text=True, check=True).stdout
    latencies: dict[str, list[float]] = {}
    for row in csv.DictReader(io.StringIO(out)):
        latencies.setdefault(row["status-code"], []).append(float(row["response-time"]))
    if not latencies:
        raise SystemExit(f"hey printed no requests: {out[-500:]}")
    ok = latencies.get("200", [])
    return {"concurrency": concurrency, "requests": sum(map(len, latencies.values())), "ok": len(ok),
            "transport_errors": 0, "statuses": {k: len(v) for k, v in sorted(latencies.items())}, "wall": seconds,
            "images_per_s": len(ok) / seconds, **percentiles(ok), "p99_429": percentiles(latencies.get("429", []))["p99"],
            "client": "hey"}


def measure_overload(model: Path, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    clients, queue = OVERLOAD
    server = Server(model, "--max-queue", str(queue))
    try:
        if shutil.which("hey"):
            run = load_hey(server.base, photo_paths(args.work, args.images)[0], clients, args.wrk_seconds)
        else:
            run = asyncio.run(load(server.base, images, clients, args.requests * 2, args.seconds))
    finally:
        server.close()
    say(f"  overload c={clients} queue={queue}: {run['statuses']}, p99 200 {run['p99'] or 0:.0f} ms, "
        f"p99 429 {run['p99_429'] or 0:.0f} ms")
    return run


def fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(measured: dict[str, Any]) -> str:
    lines = [MARK_START, "```", measured["command"], "```", "",
             (f"{measured['wrk_seconds']:g} s of one-image requests a run from `wrk` (one client thread; a new request "
              "on each connection as soon as the last is answered)" if measured.get("client") == "wrk" else
              f"{measured['requests']} one-image requests a run from an httpx async client") +
             f" (640x480 JPEGs), this machine ({measured['cores']} cores, client and server on it together). Latency "
             "in ms; rows: mean rows per graph run.", ""]
    for model in measured["models"]:
        base = model["in_process"]
        lines += [f"**{model['name']}**: in-process `Captioner`: {base['images_per_s']:.1f} images/s (caption_batch, "
                  f"batch 16); one caption p50 {fmt(base['p50'])} / p99 {fmt(base['p99'])} ms.", "",
                  "| batching | concurrency | images/s | vs in-process | p50 | p95 | p99 | rows/encode | rows/step |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for run in model["runs"]:
            step = run.get("rows_per_greedy_step", run.get("rows_per_step"))
            lines.append(f"| {run['mode']} | {run['concurrency']} | {run['images_per_s']:.1f} | "
                         f"{run['images_per_s'] / base['images_per_s']:.2f}x | {fmt(run['p50'])} | {fmt(run['p95'])} | "
                         f"{fmt(run['p99'])} | {fmt(run.get('rows_per_encode'))} | {fmt(step)} |")
        over = model["overload"]
        clients, queue = OVERLOAD
        client = ("`hey` (a Go client, each of them sending again as soon as answered, ignoring Retry-After)"
                  if over.get("client") == "hey" else "the httpx client")
        lines += ["", f"Overload ({clients} clients of {client}, `--max-queue {queue}`): statuses {over['statuses']}, "
                  f"transport errors {over['transport_errors']}; p99 of the 200s {fmt(over['p99'])} ms, of the 429s "
                  f"{fmt(over['p99_429'])} ms."]
        best = max((r for r in model["runs"] if r["concurrency"] == CONCURRENCY[-1]), key=lambda r: r["images_per_s"])
        single = [r for r in model["runs"] if r["concurrency"] == 1 and r["mode"] == best["mode"]][0]
        ratio = best["images_per_s"] / base["images_per_s"]
        bound = LATENCY_GOAL * (base["p99"] or 0) + LATENCY_SLACK_MS
        lines += [f"- Goal: at concurrency {CONCURRENCY[-1]}, at least {THROUGHPUT_GOAL}x the in-process images/s: "
                  f"{ratio:.2f}x ({best['mode']} batching) - {'met' if ratio >= THROUGHPUT_GOAL else 'NOT met'}.",
                  f"- Goal: p99 at concurrency 1 within {LATENCY_GOAL}x an in-process caption's p99 + "
                  f"{LATENCY_SLACK_MS:g} ms ({bound:.1f} ms): {fmt(single['p99'])} ms - "
                  f"{'met' if (single['p99'] or 1e9) <= bound else 'NOT met'}.", ""]
    lines.append(MARK_END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=Path, default=None,
                        help="a bundle (repeatable) [default: runs/latest/bundle and the seed configuration's int8]")
    parser.add_argument("--requests", type=int, default=400, help="requests per run (at most)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per run (at most)")
    parser.add_argument("--images", type=int, default=32, help="distinct photos the requests cycle through")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="batching modes to measure; MODE:N runs N worker processes (--workers N)")
    parser.add_argument("--work", type=Path, default=WORK, help="where the generated photos are kept")
    parser.add_argument("--client", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx",
                        help="the load generator of the batching runs [default: wrk where installed (apt install "
                             "wrk): a C client leaves the cores to the server; else an httpx async client]")
    parser.add_argument("--wrk-seconds", type=float, default=10.0, help="seconds of each wrk run")
    add_report_arguments(parser, PAGE)
    args = parser.parse_args()
    measured = prepare(args, args.work)
    if measured is None:
        models = args.model or default_models()
        if not models:
            raise SystemExit("no bundle: run scripts/demo.sh (runs/latest/bundle), or give --model")
        images = photos(args.work, args.images)
        command = ".venv/bin/python reports/serve.py" + "".join(f" --model {shown_path(m)}" for m in args.model or []) \
            + (f" --requests {args.requests}" if args.requests != 400 else "")
        measured = {"command": command, "requests": args.requests, "cores": os.cpu_count(), "models": [],
                    "client": args.client, "wrk_seconds": args.wrk_seconds}
        for model in models:
            say(f"{shown_path(model)}: in-process")
            entry = {"name": shown_path(model), "in_process": in_process(model, images, args.requests), "runs": []}
            say(f"  {entry['in_process']['images_per_s']:.1f} images/s; caption p99 {entry['in_process']['p99']:.1f} ms")
            for mode in args.modes.split(","):
                entry["runs"] += measure_server(model, images, mode, args)
            entry["overload"] = measure_overload(model, images, args)
            measured["models"].append(entry)
    publish(args, PAGE, PAGE_TITLE, MARK_START, MARK_END, render(measured), measured)


if __name__ == "__main__":
    main()
