"""``capkit serve`` (capkit.serve): the real command in a child process on a free loopback port.

Its answers are ``capkit caption --json``'s for the same images and options (greedy and seeded sampling, alone and
batched with other requests); every error status has its JSON shape; every case of the hostile suite
(tests/hostile_serve.py) holds; /readyz is 503 until the model is warm; /metrics parses and moves; the command's
own errors are one line. (Under load, over processes and on Ray: tests/test_serve_load.py.)"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def tight(bundle):
    with ServeProcess(bundle, *hostile.TIGHT) as process:
        yield process


def cli_json(bundle: Path, photos: list[Path], *args: str) -> list[dict]:
    proc = subprocess.run([*hostile.capkit_command(), "caption", *map(str, photos), "--model", str(bundle), "--json",
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def without_image(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "image"}


def assert_cases_hold(servers: dict, cases: list) -> None:
    outcomes = hostile.run_cases(servers, cases)
    broken = [f"{case.name!r}: {'; '.join(o.problems)}" for case, o in zip(cases, outcomes) if o.problems]
    assert not broken, "\n".join(broken)
    assert all(o.refused for case, o in zip(cases, outcomes) if case.hostile)


# -- the answers -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["--temp", "0.8", "--seed", "3"], ["--temp", "1", "--top-k", "4", "--seed", "9"],
                                     ["--beam", "3"]], ids=["greedy", "sampled", "top-k", "beam"])
def test_captions_equal_capkit_caption_json(server, bundle, photos, options: list[str]) -> None:
    """One image per request: exactly what `capkit caption --json --batch-size 1` prints; all eight in one multipart
    request, and eight requests at once (batched together by the server): the same captions and tokens, logprobs
    equal to within the float rounding that batching changes."""
    expected = cli_json(bundle, photos, "--batch-size", "1", *options)
    params = {flag.lstrip("-").replace("-", "_").replace("temp", "temperature"): value
              for flag, value in zip(options[::2], options[1::2])}
    alone = [httpx.post(server.base + "/v1/captions", content=p.read_bytes(), params=params, timeout=60).json()
             for p in photos]
    assert [a["captions"] for a in alone] == [[{**e, "image": None}] for e in expected]
    together = httpx.post(server.base + "/v1/captions", params=params, timeout=60,
                          files=[("image", (p.name, p.read_bytes(), "image/png")) for p in photos]).json()["captions"]
    assert [c["image"] for c in together] == [p.name for p in photos]
    with ThreadPoolExecutor(8) as pool:
        at_once = list(pool.map(lambda p: httpx.post(server.base + "/v1/captions", content=p.read_bytes(),
                                                     params=params, timeout=60).json()["captions"][0], photos))
    for got in (together, at_once):
        assert [(c["caption"], c["tokens"]) for c in got] == [(e["caption"], e["tokens"]) for e in expected]
        assert [c["logprob"] for c in got] == pytest.approx([e["logprob"] for e in expected], abs=1e-5)


def test_a_caption_is_the_captioners_in_every_request_form(server, bundle, photos) -> None:
    """Raw body, multipart file, options as query or form fields: each image's object is Caption.to_dict() of the
    library's own caption of its bytes (what `capkit caption --json` prints)."""
    from capkit.runtime.captioner import Captioner

    captioner = Captioner(bundle, device="cpu", threads=1)
    data = photos[0].read_bytes()
    for options in ({}, {"temperature": "0.9", "seed": "5"}):
        expected = without_image(captioner.caption(data, **{k: float(v) if k == "temperature" else int(v)
                                                            for k, v in options.items()}).to_dict())
        raw = httpx.post(server.base + "/v1/captions", content=data, params=options).json()["captions"]
        form = httpx.post(server.base + "/v1/captions", files={"photo": ("a b.png", data, "image/png")},
                          data=options).json()["captions"]
        assert raw == [{"image": None, **expected}]
        assert form == [{"image": "a b.png", **expected}]


# -- errors and the hostile suite ---------------------------------------------------------------------------------------
def test_request_errors_have_their_status_and_json_shape(server) -> None:
    """400 (no image, broken multipart), 404, 405, 413 (too many images), 422 (bad options, a body that is no image):
    each JSON {error: one line, error_type}."""
    assert_cases_hold({False: server}, hostile.request_cases())


def test_hostile_options_are_422_and_legal_ones_captioned(server) -> None:
    assert_cases_hold({False: server}, hostile.option_cases())


@pytest.mark.slow
def test_hostile_images_fail_alone(server) -> None:
    """Each hostile image of the corpus beside a good one in one multipart request: 200, the hostile image's own
    one-line error, the good image's caption as alone; as a raw body, 422 unreadable_image; legal but unusual
    images are captioned."""
    assert_cases_hold({False: server}, hostile.image_cases())


@pytest.mark.slow
def test_limits_answer_413_429_and_504(server, tight) -> None:
    """A body over --max-body-mb (declared, sent, chunked), more than --max-images images: 413; a request while
    --max-queue requests are taken on: 429 with Retry-After; a body slower than --timeout: 504."""
    assert_cases_hold({False: server, True: tight}, hostile.limit_cases())
    assert httpx.post(tight.base + "/v1/captions", content=hostile.GOOD).status_code == 200  # and it goes on


@pytest.mark.slow
def test_readyz_is_503_until_warm_then_200(bundle) -> None:
    """The server listens before its model is loaded: /healthz 200, /readyz and /v1/captions 503 not_ready; then
    200. (A large --max-batch makes the warm-up long enough to be seen.)"""
    with ServeProcess(bundle, "--max-batch", "1024", "--max-images", "1024", ready=False) as process:
        ready = httpx.get(process.base + "/readyz", timeout=30)
        alive = httpx.get(process.base + "/healthz", timeout=30)
        early = httpx.post(process.base + "/v1/captions", content=hostile.GOOD, timeout=30)
        assert (ready.status_code, ready.json()["error_type"]) == (503, "not_ready")
        assert alive.status_code == 200
        assert (early.status_code, early.json()["error_type"]) == (503, "not_ready")
        process.wait_ready()
        assert httpx.get(process.base + "/readyz").json() == {"status": "ready"}
        assert process.close() == 0


# -- operations -----------------------------------------------------------------------------------------------------
def test_metrics_parse_as_prometheus_text_and_move(server, photos) -> None:
    before = hostile.metrics(server)
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in photos[:3]]
    assert httpx.post(server.base + "/v1/captions", files=files + [("image", ("x.png", b"nope", "image/png"))]) \
        .status_code == 200
    assert httpx.post(server.base + "/v1/captions", content=b"x", params={"beam": "0"}).status_code == 422
    after = hostile.metrics(server)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("capkit_requests_total", outcome="ok") == 1
    assert moved("capkit_requests_total", outcome="invalid_option") == 1
    assert moved("capkit_images_total", outcome="ok") == 3 and moved("capkit_images_total", outcome="error") == 1
    assert moved("capkit_batch_rows_count", call="encode") >= 1
    assert moved("capkit_batch_rows_sum", call="encode") >= 3
    assert moved("capkit_stage_seconds_count", stage="queue") == 1
    assert moved("capkit_request_seconds_count") == 2
    assert after[("capkit_in_flight_requests", ())] == 0 and after[("capkit_ready", ())] == 1


def test_openapi_lists_the_decoding_options_and_limits(server) -> None:
    import dataclasses

    from capkit.runtime.decoding import DecodingOptions

    document = httpx.get(server.base + "/openapi.json").json()
    post = document["paths"]["/v1/captions"]["post"]
    assert [p["name"] for p in post["parameters"]] == [f.name for f in dataclasses.fields(DecodingOptions)]
    assert {"200", "400", "413", "422", "429", "503", "504"} <= set(post["responses"])
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["image"]
    assert schema["maxItems"] == 16


def test_one_access_line_per_request_on_stderr(server) -> None:
    lines = len(server.stderr().splitlines())
    httpx.get(server.base + "/healthz")
    httpx.post(server.base + "/v1/captions", content=hostile.GOOD)
    time.sleep(0.2)
    new = server.stderr().splitlines()[lines:]
    assert len(new) == 2, new
    assert '"GET /healthz" 200 ok' in new[0]
    assert '"POST /v1/captions" 200 ok 1 images' in new[1] and new[1].endswith(" ms")


def test_command_errors_are_one_line(tmp_path, bundle, monkeypatch) -> None:
    """A missing bundle, --replicas without --ray, a port in use, a missing part of the serve extra: one line each."""
    from click.testing import CliRunner

    from capkit.cli import main

    result = CliRunner().invoke(main, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: ") and "no such bundle folder" in result.stderr
    result = CliRunner().invoke(main, ["serve", str(bundle), "--replicas", "2"])
    assert result.exit_code == 2 and "--replicas is for --ray" in result.stderr
    with hostile.socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(bundle), "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot listen on 127.0.0.1:{port} (Address already in use)\n"
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    result = CliRunner().invoke(main, ["serve", str(bundle)])
    assert result.exit_code == 1
    assert result.stderr == ('Error: capkit serve needs the serve extra (prometheus_client is missing): pip install '
                             '"capkit[serve]" (in a checkout: pip install -e ".[serve]")\n')
