"""``capkit serve`` under load and beyond one process: SIGTERM during load loses no request taken on; resident memory
levels off over 2,000 requests mixing good and hostile images; --workers share a port and their metrics; Ray Serve
gives the local server's answers; the client examples of docs/serve.md run against a real server; the load
benchmark (reports/serve.py) runs. Each test starts the real command in a child process (tests/hostile_serve.py)."""

from __future__ import annotations

import json
import signal
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import hostile_serve as hostile  # noqa: E402  (tests/ is on sys.path: conftest)
from serve_fixtures import bundle, photos, server  # noqa: E402,F401  (fixtures, by name)
ServeProcess = hostile.ServeProcess
metrics = hostile.metrics


# -- drain, memory, processes ---------------------------------------------------------------------------------------
def noisy_jpeg(seed: int, size: tuple[int, int] = (1600, 1200)) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    return out.getvalue()


@pytest.mark.slow
def test_sigterm_during_load_loses_no_request_taken_on(bundle) -> None:
    """24 requests of 4 large photos each are sent; once the server has taken most of them on, SIGTERM: /readyz and a
    new request get 503 draining, every request taken on still gets its 4 captions (many finishing after the
    signal), any other gets 503 draining (none goes unanswered), and the server exits 0."""
    photos = [noisy_jpeg(seed) for seed in range(4)]
    files = [("image", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    process = ServeProcess(bundle, "--preprocess-threads", "1")
    done: list[float] = []

    def client(_: int):
        reply = httpx.post(process.base + "/v1/captions", files=files, timeout=120)
        done.append(time.monotonic())
        return reply

    try:
        with ThreadPoolExecutor(24) as pool:
            replies = [pool.submit(client, i) for i in range(24)]
            deadline = time.monotonic() + 60
            while (taken := metrics(process).get(("capkit_in_flight_requests", ()), 0)) < 20 \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            process.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.1)
            late = httpx.post(process.base + "/v1/captions", content=hostile.GOOD, timeout=30)
            readyz = httpx.get(process.base + "/readyz", timeout=30)
            answers = [r.result() for r in replies]
        code = process.proc.wait(60)
    finally:
        process.close()
    captioned = [a for a in answers if a.status_code == 200]
    assert taken >= 20 and len(captioned) >= taken  # every request taken on before the signal was answered
    assert all(len(a.json()["captions"]) == 4 and all("caption" in c for c in a.json()["captions"]) for a in captioned)
    assert all(a.json()["error_type"] == "draining" for a in answers if a.status_code != 200), \
        [a.text[:200] for a in answers if a.status_code != 200]
    assert sum(t > signalled for t in done) >= 10  # requests in flight at the signal were finished, not dropped
    assert (late.status_code, late.json()["error_type"]) == (503, "draining")
    assert (readyz.status_code, readyz.json()["error_type"]) == (503, "draining")
    assert code == 0
    assert "Traceback" not in process.stderr()


@pytest.mark.slow
def test_peak_memory_is_bounded_over_2000_requests(bundle) -> None:
    """2,000 requests, 8 at a time, mixing good images, hostile ones beside good ones and hostile raw bodies: every
    good image captioned, every hostile one refused, and the server's resident memory levels off (peak under
    PEAK_MB; what the last 1,500 requests add stays small)."""
    bad = hostile.hostile_images()
    bad.pop("tall-2x40000000.png")  # 40 MB of rows to inflate just to read its header: slow, and in the suite
    names = sorted(bad)
    big = hostile.png((3000, 3000), (30, 90, 150))

    def request(i: int) -> tuple[bool, bool]:
        name = names[i % len(names)]
        if i % 3 == 0:
            reply = httpx.post(server.base + "/v1/captions", content=bad[name], timeout=120)
            return reply.status_code in (400, 422), True
        files = [("image", ("good.png", hostile.GOOD, "image/png")), ("image", (name, bad[name], "image/png"))]
        if i % 50 == 1:
            files.append(("image", ("big.png", big, "image/png")))
        reply = httpx.post(server.base + "/v1/captions", files=files, timeout=120)
        captions = reply.json()["captions"] if reply.status_code == 200 else []
        return bool(captions) and "error" in captions[1], bool(captions) and "caption" in captions[0]

    with ServeProcess(bundle) as server:
        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(request, range(500)))
            settled = server.memory_mb("VmRSS")
            rest = list(pool.map(request, range(500, 2000)))
        peak, final = server.memory_mb("VmHWM"), server.memory_mb("VmRSS")
        assert "Traceback" not in server.stderr()
    outcomes = first + rest
    assert all(refused for refused, _ in outcomes), sum(not r for r, _ in outcomes)
    assert all(kept for _, kept in outcomes), sum(not k for _, k in outcomes)
    assert peak < hostile.PEAK_MB, peak
    assert final - settled < 100, (settled, final)


@pytest.mark.slow
def test_workers_share_one_port_and_their_metrics(bundle, photos) -> None:
    """--workers 2: both serve (the metrics add up over both, ready 2), the captions are the single process's,
    and SIGTERM drains both and exits 0."""
    with ServeProcess(bundle, "--workers", "2") as process:
        deadline = time.monotonic() + 120
        while metrics(process).get(("capkit_ready", ()), 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: httpx.post(process.base + "/v1/captions", content=p.read_bytes(),
                                                     timeout=60).json()["captions"][0], photos * 3))
        counts = metrics(process)
        assert counts[("capkit_ready", ())] == 2
        assert counts[("capkit_requests_total", (("outcome", "ok"),))] == len(photos) * 3
        code = process.close()
    from capkit.runtime.captioner import Captioner

    captioner = Captioner(bundle, device="cpu", threads=1)
    expected = [captioner.caption(p.read_bytes()).tokens for p in photos] * 3
    assert [tuple(c["tokens"]) for c in got] == expected
    assert code == 0


# -- the documented clients -----------------------------------------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs" / "serve.md"


def client_example(name: str) -> str:
    """The code block after ``<!-- client: NAME -->`` in docs/serve.md."""
    text = DOCS.read_text()
    after = text.split(f"<!-- client: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["curl", "python", "javascript"])
def test_documented_clients_run_against_a_real_server(server, photos, tmp_path, name: str) -> None:
    """docs/serve.md's curl, Python (httpx) and JavaScript (fetch, Node) examples, as written but for the port, in a
    folder with a photo.jpg: each exits 0 and prints the server's caption of the photo."""
    from PIL import Image

    Image.open(photos[1]).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    code = client_example(name).replace("http://127.0.0.1:8000", server.base)
    sampled = httpx.post(server.base + "/v1/captions", content=(tmp_path / "photo.jpg").read_bytes(),
                         params={"temperature": 0.7, "seed": 1}).json()["captions"][0]["caption"]
    if name == "curl":
        command = ["bash", "-euo", "pipefail", "-c", code]
    elif name == "python":
        command = [sys.executable, "-c", code]
    else:
        node = pytest.importorskip("shutil").which("node")
        if node is None:
            pytest.skip("node is not installed")
        (tmp_path / "caption.mjs").write_text(code)
        command = [node, "caption.mjs"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sampled in proc.stdout
    if name == "curl":
        beam = httpx.post(server.base + "/v1/captions", content=(tmp_path / "photo.jpg").read_bytes(),
                          params={"beam": 3}).json()["captions"][0]
        answers = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        assert answers[0]["captions"][0]["caption"] == sampled
        assert [c["caption"] for c in answers[1]["captions"]] == [beam["caption"]] * 2


@pytest.mark.slow
def test_ray_serve_gives_the_local_servers_captions(server, bundle, photos, free_port) -> None:
    """`capkit serve --ray` on a local Ray cluster: the same answers as the local server (greedy, seeded sampling,
    a multipart request, an error), and SIGTERM stops it (exit 0)."""
    pytest.importorskip("ray.serve")
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in photos]
    requests = [({"content": photos[0].read_bytes()}, {}), ({"files": files}, {}),
                ({"files": files}, {"temperature": "0.8", "seed": "3"}), ({"content": b"x"}, {"beam": "0"})]
    expected = [httpx.post(server.base + "/v1/captions", params=params, timeout=60, **body) for body, params in requests]
    # no address-space cap: Ray's object store maps a large region
    with ServeProcess(bundle, "--ray", "--port", str(free_port), cap=None) as process:
        got = [httpx.post(process.base + "/v1/captions", params=params, timeout=60, **body)
               for body, params in requests]
        assert [r.status_code for r in got] == [r.status_code for r in expected] == [200, 200, 200, 422]
        assert [r.json() for r in got[:3]] == [r.json() for r in expected[:3]]
        assert got[3].json() == expected[3].json()
        assert process.close(timeout=120) == 0


# -- the load benchmark (reports/serve.py) ---------------------------------------------------------------------------
def test_load_report_renders_its_table_and_goals() -> None:
    from capkit.reports import serve as report

    runs = [{"mode": mode, "concurrency": c, "images_per_s": rate, "p50": 10.0, "p95": 12.0, "p99": p99,
             "rows_per_encode": 2.0, "rows_per_greedy_step": 3.5}
            for mode, c, rate, p99 in (("step", 1, 50.0, 11.0), ("step", 32, 95.0, 40.0), ("none", 1, 49.0, 11.5),
                                       ("none", 32, 60.0, 300.0))]
    model = {"name": "runs/latest/bundle", "in_process": {"images_per_s": 100.0, "p50": 8.0, "p95": 8.5, "p99": 9.0},
             "runs": runs, "overload": {"statuses": {"200": 40, "429": 200}, "transport_errors": 0, "p99": 80.0,
                                        "p99_429": 3.0}}
    text = report.render({"command": "CMD", "requests": 400, "cores": 2, "models": [model]})
    assert text.startswith(report.MARK_START) and text.endswith(report.MARK_END)
    assert "| step | 32 | 95.0 | 0.95x | 10.0 | 12.0 | 40.0 | 2.0 | 3.5 |" in text
    assert "0.95x (step batching) - met" in text
    assert "(12.8 ms): 11.0 ms - met" in text  # 1.2 x 9.0 + 2
    assert "statuses {'200': 40, '429': 200}, transport errors 0" in text


@pytest.mark.slow
def test_load_benchmark_runs_briefly(bundle, tmp_path) -> None:
    """reports/serve.py end to end with a few requests and one batching mode, its section printed (not written),
    with each load generator (wrk where installed)."""
    script = Path(__file__).resolve().parents[1] / "reports" / "serve.py"
    for client in ("httpx", "wrk") if shutil.which("wrk") else ("httpx",):
        proc = subprocess.run([sys.executable, str(script), "--model", str(bundle), "--requests", "12", "--images", "4",
                               "--modes", "step", "--print", "--work", str(tmp_path), "--client", client,
                               "--wrk-seconds", "1"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "| step | 32 |" in proc.stdout and "Overload (128 clients" in proc.stdout
        assert "transport errors 0" in proc.stdout
        assert ("from `wrk`" in proc.stdout) == (client == "wrk")
