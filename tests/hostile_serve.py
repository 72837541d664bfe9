"""``capkit serve``'s hostile suite: the real command in a child process under an address-space cap, sent hostile
images (inside multipart requests beside a good one, and as raw bodies), hostile decoding options, malformed and
oversized requests, slow bodies and a full queue, over loopback.

Used by tests/test_serve.py (every case must hold) and runnable on its own for the README's reliability counts:

    .venv/bin/python tests/hostile_serve.py        # builds a tiny bundle, starts two servers, prints the table

A case holds when its answer has the expected status, every error is JSON ``{"error": one line, "error_type"}``
with the expected type, a 200 has one object per image (each a caption or a one-line error), a good image sent
beside the hostile input still gets its caption (the same as alone), and the server stays up, under PEAK_MB, with
no traceback on stderr. "Refused cleanly": the hostile input got its error (the request's, or its image's own);
"results lost": a good image beside it did not get its caption.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import hostile_corpus as corpus  # the tiny bundle and the good image (tests/ is on sys.path: conftest, or run as a script)
import hostile_web  # the raw-socket exchange and hang-up helpers

SAFETY_NET_BYTES = 6 << 30  # RLIMIT_AS of the server: a regression fails its case, not the machine
PEAK_MB = 1024  # the server's resident memory, at most, through the suite
ANSWER_S = 30.0
START_S = 300.0  # until the server prints its address (a Ray cluster starting on a busy machine is slow)
TIGHT = ["--max-queue", "1", "--timeout", "1", "--max-body-mb", "0.0625", "--max-images", "2"]  # the limits' server
CAP_AND_EXEC = ("import json, os, resource, sys; limit = int(sys.argv[2]); "
                "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); command = json.loads(sys.argv[1]); "
                "os.execv(command[0], command)")


def capkit_command() -> list[str]:
    script = Path(sys.executable).with_name("capkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "capkit"]


# -- the server --------------------------------------------------------------------------------------------------
class ServeProcess:
    """``capkit serve BUNDLE --port 0 ARGS`` in a child process (under an address-space cap), its stderr in a file;
    ``ready``: waits until /readyz says 200."""

    def __init__(self, bundle: Path, *args: str, log: Optional[Path] = None, ready: bool = True,
                 cap: Optional[int] = SAFETY_NET_BYTES) -> None:
        self.bundle = bundle
        command = [*capkit_command(), "serve", str(bundle), "--port", "0", *args]
        if cap is not None:
            command = [sys.executable, "-S", "-I", "-c", CAP_AND_EXEC, json.dumps(command), str(cap)]
        self.log = log or Path(tempfile.mkstemp(prefix="capkit-serve-", suffix=".txt")[1])
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        found, seen = self._address_line(START_S)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {seen!r} {self.stderr()[-2000:]}")
        self.port = int(found.group(1))
        self.base = f"http://127.0.0.1:{self.port}"
        if ready:
            self.wait_ready()

    def _address_line(self, timeout: float) -> tuple[Optional[re.Match], list[str]]:
        """The "http://HOST:PORT/" in the first stdout line that has one (Ray's driver may print its own lines
        first), and the lines read; (None, lines) at EOF or past ``timeout`` seconds."""
        import select

        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline and len(seen) < 1000:
            if not select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            seen.append(line)
            if found := re.search(r"http://\S+?:(\d+)/", line):
                return found, seen
        return None, seen[-5:]

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.stderr()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"the server was not ready within {timeout} s")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def memory_mb(self, field_name: str = "VmHWM") -> float:
        """The server's peak (VmHWM) or current (VmRSS) resident memory."""
        status = Path(f"/proc/{self.proc.pid}/status")
        for line in status.read_text().splitlines() if status.exists() else ():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self, timeout: float = 30) -> Optional[int]:
        """SIGTERM, then the exit status (SIGKILL after ``timeout`` seconds: None)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code: Optional[int] = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.proc.stdout.close()
        return code

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metrics(server: ServeProcess) -> dict[tuple[str, tuple], float]:
    """The server's /metrics, parsed as Prometheus text: {(sample name, sorted labels): value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.base + "/metrics", timeout=ANSWER_S).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def write_photos(folder: Path, count: int = 8) -> list[Path]:
    """Synthetic photos (PNG) whose captions differ under tests/conftest.py's export_kit model."""
    from PIL import Image

    from capkit.export.checks import synthetic_images

    paths = []
    for i, pixels in enumerate(synthetic_images(count, seed=4)):
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def raw_exchange(port: int, raw: bytes, pause: float = 0.0, rest: bytes = b"", timeout: float = ANSWER_S) -> bytes:
    """Sends ``raw`` on a fresh connection, waits ``pause`` seconds, sends ``rest``, reads until the server closes."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(raw)
            time.sleep(pause)
            if rest:
                conn.sendall(rest)
            while data := conn.recv(1 << 16):
                chunks.append(data)
        except (socket.timeout, ConnectionError):
            pass
    return b"".join(chunks)


# -- images ------------------------------------------------------------------------------------------------------
def png(size: tuple[int, int], color: tuple[int, int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, size, color if mode in ("RGB", "RGBA", "CMYK") else color[0]).save(out, fmt)
    return out.getvalue()


def hostile_images() -> dict[str, bytes]:
    """Files that are no image, or images over the runtime's Limits (tests/hostile_corpus.py's)."""
    good = png((48, 40), (20, 160, 90))
    jpeg = png((640, 480), (200, 40, 40), fmt="JPEG")
    return {
        "strip-1x1000000.png": corpus.strip_png(1_000_000, 1), "strip-1000000x1.png": corpus.strip_png(1, 1_000_000),
        "tall-2x40000000.png": corpus.strip_png(2, 40_000_000),
        "header-100000x100000.png": corpus.png_claiming(100_000, 100_000),
        "header-20000x20000.png": corpus.png_claiming(20_000, 20_000), "header-0x10.png": corpus.png_claiming(0, 10),
        "text.jpg": b"this is not an image\n", "empty.png": b"", "random.webp": os.urandom(4096),
        "wrong-magic.png": b"GIF89a" + os.urandom(200), "truncated.png": good[: len(good) // 2],
        "truncated.jpg": jpeg[:2000],
    }


def legal_images() -> dict[str, bytes]:
    """Unusual images that are images all the same: each must be captioned."""
    from PIL import Image

    frames = [Image.new("P", (32, 32), i % 200) for i in range(300)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {"grey16.png": png((40, 30), (40000, 0, 0), "I;16"), "cmyk.jpg": png((40, 30), (10, 200, 30), "CMYK", "JPEG"),
            "rgba.png": png((40, 30), (10, 200, 30), "RGBA"), "palette.gif": png((40, 30), (3, 0, 0), "P", "GIF"),
            "one-pixel.png": png((1, 1), (9, 9, 9)), "big-7000x7000.png": png((7000, 7000), (30, 90, 150)),
            "animated-300.gif": gif.getvalue(), "named\nnew line.png": png((48, 40), (20, 160, 90)),
            "ünïcødé.png": png((48, 40), (20, 160, 90))}


GOOD = png((48, 40), (20, 160, 90))


# -- the cases ---------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    group: str  # image | option | request | limit
    send: Callable[["ServeProcess"], tuple[int, dict[str, str], bytes]]  # -> status, headers, body
    statuses: tuple[int, ...]
    error_type: Optional[str] = None  # the error's type, when the answer is an error
    hostile: bool = True
    images: tuple[str, ...] = ()  # a multipart request's file names, in order: "good.png" must be captioned
    tight: bool = False  # sent to the server with the tight limits (TIGHT)
    beside: Optional[bytes] = None  # a legal image sent after good.png: both are decoded in one batch


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    refused: bool = False
    lost: bool = False


def post(path: str = "/v1/captions", method: str = "POST",
         **kwargs: Any) -> Callable[[ServeProcess], tuple[int, dict[str, str], bytes]]:
    def send(server: ServeProcess) -> tuple[int, dict[str, str], bytes]:
        import httpx

        reply = httpx.request(method, server.base + path, timeout=ANSWER_S, **kwargs)
        return reply.status_code, dict(reply.headers), reply.content
    return send


def raw(request: bytes, pause: float = 0.0, rest: bytes = b"") -> Callable[[ServeProcess], tuple[int, dict, bytes]]:
    def send(server: ServeProcess) -> tuple[int, dict[str, str], bytes]:
        reply = hostile_web.parse(raw_exchange(server.port, request, pause, rest))
        return reply.status or 0, reply.headers, reply.body
    return send


def image_cases() -> list[Case]:
    cases = []
    for name, data in hostile_images().items():
        files = [("image", ("good.png", GOOD, "image/png")), ("image", (name, data, "application/octet-stream"))]
        cases.append(Case(f"image {name} beside a good one", "image", post(files=files), (200,),
                          images=("good.png", name)))
        cases.append(Case(f"image {name} as the body", "image", post(content=data), (400, 422),
                          "bad_request" if not data else "unreadable_image"))
    for name, data in legal_images().items():
        files = [("image", ("good.png", GOOD, "image/png")), ("image", (name, data, "application/octet-stream"))]
        cases.append(Case(f"image {name!r} beside a good one", "image", post(files=files), (200,), hostile=False,
                          images=("good.png", name), beside=data))
    return cases


def option_cases() -> list[Case]:
    bad = {"max_length": ["1000000000", str(2 ** 70), "-1", "2.5", str(10 ** 330)],
           "beam": ["1000000", "0", str(10 ** 330)], "temperature": ["-1", "nan", "inf", "hot", "", "1" * 1000],
           "top_p": ["0", "2", "nan"], "top_k": ["-5", "1.5"],
           "seed": ["-1", "0x10"], "threads": ["4"], "temp": ["0.7"], "image": ["x"]}
    cases = [Case(f"option {name}={value[:20]!r}", "option", post(params={name: value}, content=GOOD), (422,),
                  "invalid_option") for name, values in bad.items() for value in values]
    cases += [Case("option beam=3 with temperature=1", "option", post(params={"beam": "3", "temperature": "1"},
                                                                      content=GOOD), (422,), "invalid_option"),
              Case("option given twice", "option", post(params=[("seed", "1"), ("seed", "2")], content=GOOD), (422,),
                   "invalid_option"),
              Case("option as a form field, bad", "option", post(files=[("image", ("good.png", GOOD, "image/png"))],
                                                                 data={"temperature": "-3"}), (422,), "invalid_option")]
    legal = {"temperature=1e-320": {"temperature": "1e-320"}, "temperature=1e308": {"temperature": "1e308"},
             "top_p=1e-300": {"temperature": "1", "top_p": "1e-300"}, "top_k=10**12": {"temperature": "1",
                                                                                      "top_k": str(10 ** 12)},
             "seed=2**200": {"temperature": "1", "seed": str(2 ** 200)}, "beam=64": {"beam": "64"},
             "max_length=512": {"max_length": "512"}}
    cases += [Case(f"option {name}", "option", post(params=params, content=GOOD), (200,), hostile=False)
              for name, params in legal.items()]
    return cases


def multipart(*parts: bytes, boundary: bytes = b"XyZ") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"


def file_part(name: bytes, data: bytes) -> bytes:
    return b'Content-Disposition: form-data; name="image"; filename="' + name + b'"\r\n\r\n' + data


def request_cases() -> list[Case]:
    form = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    many_fields = multipart(*(b'Content-Disposition: form-data; name="seed"\r\n\r\n1' for _ in range(200)))
    return [
        Case("empty body", "request", post(content=b""), (400,), "bad_request"),
        Case("multipart without a boundary", "request", post(content=GOOD, headers={
            "Content-Type": "multipart/form-data"}), (400,), "bad_request"),
        Case("multipart, garbage", "request", post(content=b"\x00garbage" * 100, headers=form), (400,), "bad_request"),
        Case("multipart, truncated", "request", post(content=multipart(file_part(b"a.png", GOOD))[:-40],
                                                     headers=form), (400,), "bad_request"),
        Case("multipart, fields only", "request", post(content=multipart(
            b'Content-Disposition: form-data; name="seed"\r\n\r\n1'), headers=form), (400,), "bad_request"),
        Case("multipart, 200 fields", "request", post(content=many_fields, headers=form), (400, 422)),
        Case("multipart, a 2 KB field", "request", post(content=multipart(
            b'Content-Disposition: form-data; name="seed"\r\n\r\n' + b"1" * 2048, file_part(b"a.png", GOOD)),
            headers=form), (400,), "bad_request"),
        Case("multipart, a non-UTF-8 file name", "request", post(content=multipart(file_part(b"good\xff\xfe.png", GOOD)),
                                                                   headers=form), (200,), hostile=False),
        Case("multipart, 17 images", "request", post(files=[("image", (f"{i}.png", GOOD, "image/png"))
                                                            for i in range(17)]), (413,), "too_large"),
        Case("GET /v1/captions", "request", post(method="GET"), (405,), "method_not_allowed"),
        Case("PUT /v1/captions", "request", post(method="PUT", content=GOOD), (405,), "method_not_allowed"),
        Case("unknown path", "request", post("/v2/captions", content=GOOD), (404,), "not_found"),
        Case("traversal path", "request", raw(b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
             (400, 404)),
        Case("a URL as the body", "request", post(content=b"http://169.254.169.254/latest/meta-data/"), (422,),
             "unreadable_image"),
        Case("a client hanging up mid-body, then a good request", "request", hang_up_mid_body, (200,), hostile=False,
             images=("good.png",)),
    ]


def limit_cases() -> list[Case]:
    """Against the tight server (TIGHT): 64 KB bodies, 2 images, a 1 s timeout, one request at a time."""
    big = os.urandom(100 * 1024)
    head = (b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n")
    return [
        Case("body over the limit (Content-Length)", "limit", post(content=big), (413,), "too_large", tight=True),
        Case("body over the limit, declared only", "limit", raw(head + b"Content-Length: 99999999999\r\n\r\n"), (413,),
             "too_large", tight=True),
        Case("body over the limit (chunked)", "limit", post(content=iter([big[:50_000], big[50_000:]])), (413,),
             "too_large", tight=True),
        Case("3 images", "limit", post(files=[("image", (f"{i}.png", GOOD, "image/png")) for i in range(3)]), (413,),
             "too_large", tight=True),
        Case("a body slower than the timeout", "limit", raw(head + b"Content-Length: 1000\r\n\r\n" + GOOD[:10],
                                                            pause=1.5), (504,), "timeout", tight=True),
        Case("a request while the queue is full", "limit", queue_full, (429,), "overloaded", tight=True),
    ]


def queue_full(server: ServeProcess) -> tuple[int, dict[str, str], bytes]:
    """One request held open (a slow body) fills the tight server's queue of 1: the next is answered 429."""
    import httpx

    head = b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_S) as held:
        held.sendall(head + GOOD[:10])
        time.sleep(0.2)  # taken on, reading its body
        reply = httpx.post(server.base + "/v1/captions", content=GOOD, timeout=ANSWER_S)
    if "retry-after" not in reply.headers:
        return 0, dict(reply.headers), b"no Retry-After header: " + reply.content
    return reply.status_code, dict(reply.headers), reply.content


def hang_up_mid_body(server: ServeProcess) -> tuple[int, dict[str, str], bytes]:
    """A client that hangs up (a reset) halfway through its body; then a good request, which must be answered."""
    import httpx

    head = b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_S)
    conn.sendall(head + GOOD[:100])
    time.sleep(0.2)
    hostile_web.hang_up(conn)
    time.sleep(0.2)
    reply = httpx.post(server.base + "/v1/captions", files=[("image", ("good.png", GOOD, "image/png"))],
                       timeout=ANSWER_S)
    return reply.status_code, dict(reply.headers), reply.content


def suite() -> list[Case]:
    return [*image_cases(), *option_cases(), *request_cases(), *limit_cases()]


# -- judging -----------------------------------------------------------------------------------------------------
def judge(case: Case, status: int, body: bytes, good_caption: dict) -> Outcome:
    outcome = Outcome()
    p = outcome.problems
    if status not in case.statuses:
        p.append(f"status {status}, expected {case.statuses}: {body[:200]!r}")
    try:
        data = json.loads(body)
    except ValueError:
        p.append(f"not JSON: {body[:200]!r}")
        return outcome
    if status >= 400:
        outcome.refused = True
        if not isinstance(data.get("error"), str) or "\n" in data["error"] or not data["error"]:
            p.append(f"error is not one line: {data.get('error')!r}")
        if case.error_type and data.get("error_type") != case.error_type:
            p.append(f"error_type {data.get('error_type')!r}, expected {case.error_type!r}")
        return outcome
    captions = data.get("captions")
    if not isinstance(captions, list) or case.images and len(captions) != len(case.images):
        p.append(f"captions: {str(captions)[:200]}")
        return outcome
    for name, obj in zip(case.images, captions):
        if "error" in obj and ("\n" in obj["error"] or set(obj) != {"image", "error"}):
            p.append(f"{name}: a malformed error object {obj}")
        if name == "good.png" and {k: v for k, v in obj.items() if k != "image"} != good_caption:
            outcome.lost = True
            p.append(f"the good image's caption is missing or changed: {obj}")
        elif name != "good.png" and case.hostile:
            outcome.refused = "error" in obj
            if not outcome.refused:
                p.append(f"{name} was captioned")
        elif name != "good.png" and "caption" not in obj:
            p.append(f"a legal image was refused: {obj}")
    if not case.images and not all("caption" in obj for obj in captions):
        p.append(f"not captioned: {captions}")
    return outcome


def good_caption_beside(bundle: Path, other: bytes) -> dict:
    """The library's caption of good.png decoded in one batch with ``other`` (a batch of two rows may round
    differently from one row, and a tiny model's near-ties can turn on that): what the server must answer."""
    from capkit.runtime.captioner import Captioner

    good, _ = Captioner(bundle, device="cpu").caption_batch([GOOD, other])
    return {k: v for k, v in good.to_dict().items() if k != "image"}


def run_cases(servers: dict[bool, ServeProcess], cases: list[Case]) -> list[Outcome]:
    """Every case against its server (``servers[case.tight]``); the good image's caption is each server's own
    answer for it alone, or the library's for the same pair where a legal image is decoded beside it."""
    import httpx

    good = {tight: {k: v for k, v in httpx.post(s.base + "/v1/captions", content=GOOD, timeout=ANSWER_S).json()
                    ["captions"][0].items() if k != "image"} for tight, s in servers.items()}
    outcomes = []
    for case in cases:
        server = servers[case.tight]
        try:
            status, _, body = case.send(server)
            expected = good[case.tight] if case.beside is None else good_caption_beside(server.bundle, case.beside)
            outcome = judge(case, status, body, expected)
        except Exception as e:  # a transport error: the request went unanswered
            outcome = Outcome([f"{type(e).__name__}: {e}"], lost="good.png" in case.images)
        if server.proc.poll() is not None:
            outcome.problems.append(f"the server exited ({server.proc.returncode})")
        outcomes.append(outcome)
    return outcomes


def check_servers(servers: dict[bool, ServeProcess]) -> list[str]:
    problems = []
    for server in servers.values():
        if "Traceback" in server.stderr():
            problems.append(f"a traceback on the server's stderr: {server.stderr()[-1500:]}")
        if server.memory_mb() > PEAK_MB:
            problems.append(f"peak memory {server.memory_mb():.0f} MB > {PEAK_MB} MB")
    return problems


def summary(cases: list[Case], outcomes: list[Outcome], servers: dict[bool, ServeProcess]) -> dict[str, object]:
    return {
        "tried": len(cases), "hostile": sum(c.hostile for c in cases),
        "refused cleanly": sum(c.hostile and o.refused and not o.problems for c, o in zip(cases, outcomes)),
        "legal, captioned": sum(not c.hostile and not o.problems for c, o in zip(cases, outcomes)),
        "results lost": sum(o.lost for o in outcomes),
        "broken guarantees": sum(bool(o.problems) for o in outcomes) + len(check_servers(servers)),
        "server peak MB": round(max(s.memory_mb() for s in servers.values())),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="capkit-hostile-serve-") as tmp:
        bundle = corpus.tiny_bundle(Path(tmp) / "bundle")
        started = time.perf_counter()
        with ServeProcess(bundle) as loose, ServeProcess(bundle, *TIGHT) as tight:
            servers = {False: loose, True: tight}
            cases = suite()
            outcomes = run_cases(servers, cases)
            for case, outcome in zip(cases, outcomes):
                mark = "ok " if not outcome.problems else "BAD"
                print(f"{mark} {case.group:8} {case.name[:60]!r:64} " + "; ".join(outcome.problems)[:300])
            for problem in check_servers(servers):
                print(f"BAD {problem}")
            counts = summary(cases, outcomes, servers)
        print(json.dumps(counts))
        print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 1 if counts["broken guarantees"] else 0


if __name__ == "__main__":
    sys.exit(main())
