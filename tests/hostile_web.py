"""The page server's hostile suite: ``capkit serve-web``'s app (capkit.serve.web.page_app on
capkit.serve.server.Server) in a child process under an address-space cap, sent hostile requests and
connections over loopback.

Used by tests/test_serve_web.py (every case must hold) and runnable on its own for the README's
reliability counts:

    .venv/bin/python tests/hostile_web.py        # builds the folders, starts the server, prints the table

The four mounts are temporary folders beside a secret file, and each holds files to serve and links
that point out of it. A case holds when the secret never appears in an answer, the request is answered
(or the connection closed, for idle ones), the server prints nothing on stderr (it is quiet unless asked,
so any line there is a traceback or an error), and a good request made after the case still gets its
file. "Refused cleanly": the hostile request got a 4xx answer (or, a hostile Range header, was answered
with the whole file as if it had none; or its idle connection was closed);
"results lost": a good request (one beside the case, or one of the 200 sent together) went unanswered
or got the wrong bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

SAFETY_NET_BYTES = 2 << 30  # RLIMIT_AS of the server: a leak fails its case, not the machine
IDLE_TIMEOUT_S = 1.0  # the server's request-head deadline here (10 s by default): the idle cases wait this long
ANSWER_S = 10.0  # every request must be answered within this
BIG_BYTES = 8 << 20  # the file clients hang up on, mid-response

# The server: the same app and server `capkit serve-web` runs, over the suite's folders.
CHILD = r"""
import json, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from pathlib import Path
from capkit.serve.server import Server
from capkit.serve.web import page_app
spec = json.loads(sys.argv[1])
folders = {prefix: Path(folder) for prefix, folder in spec["folders"].items()}
server = Server(page_app(Path(spec["bundle"]), folders), "127.0.0.1", 0, idle_timeout=spec["idle_timeout"])
print(server.port, flush=True)
server.serve_forever()
"""


# -- the folders -------------------------------------------------------------------------------------------------------
@dataclass
class Tree:
    root: Path
    secret: bytes  # the content of outside/secret.txt: must never be served
    folders: dict[str, Path]  # URL prefix -> folder ("" is the page itself, "bundle" the bundle)
    files: dict[str, tuple[bytes, str]]  # URL path -> (content, content type): what must be served


def make_tree(root: Path) -> Tree:
    """The four mounts under ``root`` beside ``outside/`` (the secret), each with files to serve (one in a
    subfolder) and, as hostile content, links out of it (absolute, relative from a subfolder, a folder link,
    a link into another mount), a link loop, a FIFO and a folder to list."""
    secret = b"capkit-hostile-secret-" + secrets.token_hex(8).encode()
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(secret)
    (outside / "dir" / "secret.txt").write_bytes(secret)
    folders = {"": root / "web", "js": root / "js", "ort": root / "ort", "bundle": root / "bundle"}
    own = {"": {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"},
           "js": {"browser.js": "text/javascript; charset=utf-8", "module.mjs": "text/javascript; charset=utf-8"},
           "ort": {"ort.wasm.min.mjs": "text/javascript; charset=utf-8", "ort-wasm.wasm": "application/wasm"},
           "bundle": {"capkit.json": "application/json", "decoder_step.onnx": "application/octet-stream"}}
    files: dict[str, tuple[bytes, str]] = {}
    for prefix, folder in folders.items():
        (folder / "sub").mkdir(parents=True)
        for name, kind in {**own[prefix], "sub/inner.json": "application/json"}.items():
            content = f"a file of the {prefix or 'page'} mount, {secrets.token_hex(4)}\n".encode()  # names no file
            (folder / name).write_bytes(content)
            files[f"/{prefix}/{name}" if prefix else f"/{name}"] = (content, kind)
        os.symlink(outside / "secret.txt", folder / "link-out")
        os.symlink("../../outside/secret.txt", folder / "sub" / "link-out")
        os.symlink(outside / "dir", folder / "dir-out")
        os.symlink(f"../{'web' if prefix else 'bundle'}/sub/inner.json", folder / "link-to-other-mount")
        os.symlink("sub/inner.json", folder / "link-in")  # inside its own mount: served like the file
        files[f"/{prefix}/link-in" if prefix else "/link-in"] = files[f"/{prefix}/sub/inner.json" if prefix else
                                                                      "/sub/inner.json"]
        os.symlink("loop", folder / "loop")
        os.mkfifo(folder / "fifo")
    (folders["bundle"] / "encoder.onnx").write_bytes(os.urandom(BIG_BYTES))
    return Tree(root, secret, folders, files)


# -- talking to the server ---------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: Optional[int]  # None: no status line came back
    headers: dict[str, str]
    body: bytes
    raw: bytes
    timed_out: bool = False


def parse(raw: bytes, timed_out: bool = False) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status: Optional[int] = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
    except (IndexError, ValueError):
        status = None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, body, raw, timed_out)


def exchange(port: int, raw: bytes, timeout: float = ANSWER_S) -> Reply:
    """Sends ``raw`` on a fresh connection and reads until the server closes it (or ``timeout``)."""
    chunks = []
    timed_out = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(raw)
            while data := conn.recv(1 << 16):
                chunks.append(data)
        except socket.timeout:
            timed_out = True
        except ConnectionError:
            pass
    return parse(b"".join(chunks), timed_out)


def get(port: int, target: bytes | str, method: bytes = b"GET", headers: bytes = b"", version: bytes = b"HTTP/1.1",
        timeout: float = ANSWER_S) -> Reply:
    target = target.encode() if isinstance(target, str) else target
    return exchange(port, method + b" " + target + b" " + version + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    + headers + b"\r\n", timeout)


def hang_up(conn: socket.socket) -> None:
    """Closes with a reset (SO_LINGER 0), as a client killed mid-transfer does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def closed_by_server(conn: socket.socket, within: float) -> bool:
    """Whether the server closes ``conn`` (EOF or reset) within ``within`` seconds, reading what it sends."""
    conn.settimeout(within)
    try:
        while conn.recv(1 << 16):
            pass
        return True
    except socket.timeout:
        return False
    except ConnectionError:
        return True


class PageServer:
    """The server in a child process, its stderr in a file (read with :meth:`stderr`)."""

    def __init__(self, tree: Tree, idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        spec = {"folders": {p: str(f) for p, f in tree.folders.items() if p != "bundle"},
                "bundle": str(tree.folders["bundle"]), "idle_timeout": idle_timeout}
        self.log = tree.root / "server-stderr.txt"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"}
        env.pop("CAPKIT_SERVE_LOG", None)
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec), str(SAFETY_NET_BYTES)],
                                         stdout=subprocess.PIPE, stderr=err, env=env)
        line = self.proc.stdout.readline()  # the port, once listening
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {self.stderr()[-2000:]}")
        self.port = int(line)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def peak_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status")
        for line in status.read_text().splitlines() if status.exists() else ():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self) -> "PageServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the cases ---------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    refused: bool = False  # a 4xx answer, or the idle connection closed
    lost: int = 0  # good requests that went unanswered or got the wrong bytes


@dataclass
class Case:
    name: str
    group: str  # files | links | paths | requests | load | idle | hangups
    attempt: Callable[[PageServer, Tree], Outcome]
    hostile: bool = True


def no_secret(reply: Reply, tree: Tree) -> list[str]:
    return ["served the secret from outside the mounts"] if tree.secret in reply.raw else []


def refused(reply: Reply, tree: Tree, statuses: tuple[int, ...] = (400, 404)) -> Outcome:
    """A hostile request's outcome: answered with one of ``statuses``, the secret nowhere."""
    problems = no_secret(reply, tree)
    if reply.status not in statuses:
        problems.append(f"answered {reply.status} (timed out)" if reply.timed_out else f"answered {reply.status}, "
                        f"not one of {statuses}")
    return Outcome(problems, refused=reply.status is not None and 400 <= reply.status < 500)


def served(reply: Reply, content: bytes, kind: Optional[str] = None, status: int = 200) -> Outcome:
    problems = []
    if reply.status != status or reply.body != content:
        problems.append(f"answered {reply.status} with {len(reply.body)} bytes, not {status} with the file")
    if kind is not None and reply.headers.get("content-type") != kind:
        problems.append(f"content type {reply.headers.get('content-type')!r}, not {kind!r}")
    for name, value in (("cross-origin-opener-policy", "same-origin"), ("cross-origin-embedder-policy", "require-corp"),
                        ("cross-origin-resource-policy", "same-origin"), ("cache-control", "no-store")):
        if reply.status is not None and reply.headers.get(name) != value:
            problems.append(f"{name}: {reply.headers.get(name)!r}, not {value!r}")
    return Outcome(problems)


def file_cases(tree: Tree) -> list[Case]:
    cases = [Case(f"GET {path}", "files", lambda s, t, path=path, c=content, k=kind: served(get(s.port, path), c, k),
                  hostile=False) for path, (content, kind) in tree.files.items()]
    index = tree.files["/index.html"]
    cases.append(Case("GET / (the page)", "files", lambda s, t: served(get(s.port, "/"), *index), hostile=False))
    cases.append(Case("HEAD /bundle/capkit.json", "files", lambda s, t: served(
        get(s.port, "/bundle/capkit.json", method=b"HEAD"), b"", "application/json"), hostile=False))
    cases.append(Case("Range bytes=0-3", "files", lambda s, t: served(
        get(s.port, "/bundle/capkit.json", headers=b"Range: bytes=0-3\r\n"), tree.files["/bundle/capkit.json"][0][:4],
        status=206), hostile=False))
    return cases


def link_cases(tree: Tree) -> list[Case]:
    cases = []
    for prefix in tree.folders:
        base = f"/{prefix}/" if prefix else "/"
        for name in ("link-out", "sub/link-out", "dir-out/secret.txt", "link-to-other-mount", "loop", "fifo", "sub/",
                     "dir-out/", ""):
            if not prefix and name == "":
                continue  # "/" is the page
            cases.append(Case(f"GET {base}{name}", "links", lambda s, t, path=base + name: listing_refused(
                get(s.port, path), t)))
    return cases


def listing_refused(reply: Reply, tree: Tree) -> Outcome:
    outcome = refused(reply, tree, (404,))
    if b"inner.json" in reply.body or b"secret.txt" in reply.body:
        outcome.problems.append("listed a folder")
    return outcome


def path_cases(tree: Tree) -> list[Case]:
    """Request targets that try to leave the mounts; none may serve the secret."""
    secret = str(tree.root / "outside" / "secret.txt")
    up = "../outside/secret.txt"
    targets = [f"/{up}", f"/../{up}", f"/bundle/../{up}", f"/bundle/../../{up}", f"/js/../../outside/secret.txt",
               "/bundle/..%2f..%2foutside%2fsecret.txt", "/bundle/%2e%2e/%2e%2e/outside/secret.txt",
               "/bundle/%2E%2E/%2E%2E/outside/secret.txt", "/bundle/.%2e/.%2e/outside/secret.txt",
               "/bundle/%252e%252e%252f%252e%252e%252foutside%252fsecret.txt",
               "/bundle/%25%32%65%25%32%65/outside/secret.txt", "/bundle/..%5c..%5coutside%5csecret.txt",
               "/bundle/..\\..\\outside\\secret.txt", "/bundle/%c0%ae%c0%ae/%c0%ae%c0%ae/outside/secret.txt",
               "/bundle/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afoutside%c0%afsecret.txt",
               "/bundle/%e0%80%ae%e0%80%ae/outside/secret.txt", "/bundle/%ef%bc%8e%ef%bc%8e/outside/secret.txt",
               "/bundle/%u002e%u002e/outside/secret.txt", "/bundle/..;/..;/outside/secret.txt",
               "/bundle/capkit.json%00/../../outside/secret.txt", "/bundle/%00", f"/bundle/..%00/{up}",
               f"/{secret}", f"//{secret}", f"/bundle/{secret}", f"/bundle//{secret}", f"/bundle/%2f{secret[1:]}",
               f"http://127.0.0.1/../{up}", f"http://127.0.0.1{secret}", f"http://evil.example/bundle/../../{up}",
               f"file://{secret}", up, f"../{up}", f"bundle/../../{up}", "/bundle/" + "a/" * 3000 + "x",
               "/bundle/" + "x" * 300, "/bundle/...", "/bundle/..../outside/secret.txt", f"/bundle/./../{up}",
               f"/bundle/%2e/%2e%2e/{up}", f"/bundle/capkit.json/../../{up}", f"/bundle?/../../{up}",
               f"/bundle/x#/../../{up}"]
    return [Case(f"GET {t if len(t) < 60 else t[:40] + '...' + t[-15:]}", "paths",
                 lambda s, tr, t=t: refused(get(s.port, t), tr)) for t in targets]


def request_cases(tree: Tree) -> list[Case]:
    """Malformed requests, other methods and hostile headers: answered with a 4xx (405 for other methods, 416
    for an unsatisfiable range), never a traceback."""
    f = b"/bundle/capkit.json"
    raw: dict[str, tuple[bytes, tuple[int, ...]]] = {
        "NUL byte in the request line": (b"GET /bundle/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
        "overlong UTF-8 bytes in the path": (b"GET /bundle/\xc0\xae\xc0\xae/x HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
        "Latin-1 bytes in the path": (b"GET /bundle/caf\xe9 HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
        "space in the path": (b"GET /bundle/a b HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
        "no version": (b"GET /bundle/capkit.json\r\n\r\n", (400,)),
        "no Host (HTTP/1.1)": (b"GET / HTTP/1.1\r\n\r\n", (400,)),
        "a TLS hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n", (400,)),
        "header of 1 MiB": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", (400, 431)),
        "100,000 headers": (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 100_000 + b"\r\n", (400, 431)),
        "header with a NUL": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", (400,)),
        "Content-Length -1": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", (400,)),
        "Content-Length and chunked": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: "
                                       b"chunked\r\n\r\nabc", (400, 405)),
        "bad chunk size": (b"POST " + f + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                           (400, 405)),
    }
    cases = [Case(name, "requests", lambda s, t, r=r, ok=ok: refused(exchange(s.port, r), t, ok))
             for name, (r, ok) in raw.items()]
    for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"TRACE", b"PROPFIND"):
        cases.append(Case(f"{method.decode()} {f.decode()}", "requests",
                          lambda s, t, m=method: refused(get(s.port, f, method=m), t, (405,))))
    cases.append(Case("OPTIONS *", "requests", lambda s, t: refused(get(s.port, b"*", method=b"OPTIONS"), t,
                                                                    (404, 405))))
    cases.append(Case("CONNECT evil:443", "requests", lambda s, t: refused(
        get(s.port, b"evil.example:443", method=b"CONNECT"), t, (400, 404, 405))))
    ranges = {"5000 ranges": b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(5000)),
              "malformed range": b"bytes=abc", "range past the end": b"bytes=99999999999999999999-",
              "negative range": b"bytes=5-1", "range in another unit": b"lines=0-1",
              "If-Range garbage": b"bytes=0-1\r\nIf-Range: \x7f\x7f"}
    for name, value in ranges.items():
        cases.append(Case(f"Range: {name}", "requests", lambda s, t, v=value: ranged(get(
            s.port, f, headers=b"Range: " + v + b"\r\n"), t)))
    return cases


def ranged(reply: Reply, tree: Tree) -> Outcome:
    """A hostile Range header: refused (400, 416) or ignored (200 and the whole file; Starlette ignores more
    than 100 ranges, as HTTP allows), never anything else."""
    outcome = refused(reply, tree, (200, 400, 416))
    if reply.status == 200:
        outcome.refused = reply.body == tree.files["/bundle/capkit.json"][0]
        outcome.problems += [] if outcome.refused else ["200 without the whole file"]
    return outcome


def concurrent(server: PageServer, tree: Tree, clients: int = 200) -> Outcome:
    """``clients`` connections opened together (all waiting at a barrier), each asking for a file."""
    path, (content, kind) = "/bundle/capkit.json", tree.files["/bundle/capkit.json"]
    barrier = threading.Barrier(clients)

    def one(_: int) -> bool:
        try:
            barrier.wait(ANSWER_S)
            reply = get(server.port, path)
        except (OSError, threading.BrokenBarrierError):
            return False
        return reply.status == 200 and reply.body == content

    with ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(one, range(clients)))
    lost = clients - answered
    return Outcome([f"{lost} of {clients} simultaneous requests got no answer"] if lost else [], lost=lost)


def pipelined(server: PageServer, tree: Tree, count: int = 50) -> Outcome:
    path = b"/bundle/capkit.json"
    one = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = exchange(server.port, one * (count - 1) + one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    answered = reply.raw.count(b"HTTP/1.1 200 OK")
    return Outcome([f"{count - answered} of {count} pipelined requests unanswered"] if answered != count else [],
                   lost=count - answered)


def idle(server: PageServer, tree: Tree, connections: int = 25, trickle: bool = False) -> Outcome:
    """``connections`` connections opened and left idle (or, ``trickle``, sending a request head a byte at a
    time, never finishing it): a fresh request is answered at once, and the server closes every one of them
    after its deadline."""
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(connections)]
    problems = []
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.1):
            for conn in socks:
                try:
                    conn.send(b"X")
                except OSError:
                    pass

    try:
        for conn in socks:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " if trickle else b"")
        dripper = threading.Thread(target=drip, daemon=True)
        if trickle:
            dripper.start()
        started = time.perf_counter()
        reply = get(server.port, "/bundle/capkit.json", timeout=5.0)
        if reply.status != 200:
            problems.append(f"a fresh request beside them was answered {reply.status}")
        elif time.perf_counter() - started > 2.0:  # milliseconds when idle; the machine may be busy
            problems.append(f"a fresh request beside them took {time.perf_counter() - started:.1f} s")
        open_ones = sum(not closed_by_server(conn, IDLE_TIMEOUT_S * 3 + 2) for conn in socks)
        if open_ones:
            problems.append(f"{open_ones} of {connections} idle connections still open after the deadline")
    finally:
        stop.set()
        for conn in socks:
            conn.close()
    return Outcome(problems, refused=not problems, lost=int(any("fresh" in p for p in problems)))


def kept_alive_then_idle(server: PageServer, tree: Tree) -> Outcome:
    """One request answered on a kept-alive connection, then silence: the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /bundle/capkit.json HTTP/1.1\r\nHost: x\r\n\r\n")
        closed = closed_by_server(conn, IDLE_TIMEOUT_S * 3 + 2)
    return Outcome([] if closed else ["a kept-alive connection left idle stayed open"], refused=closed)


def hang_ups(server: PageServer, tree: Tree, clients: int = 40) -> Outcome:
    """Clients asking for the 8 MiB file that reset the connection: right after asking, after the status
    line, after a few chunks, and before finishing the request head."""
    def one(i: int) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_S) as conn:
            if i % 4 == 3:
                conn.sendall(b"GET /bundle/encoder.onnx HTTP/1.1\r\nHo")
            else:
                conn.sendall(b"GET /bundle/encoder.onnx HTTP/1.1\r\nHost: x\r\n\r\n")
                for _ in range(i % 4 * 8):  # 0, 8 or 16 reads
                    conn.recv(1 << 16)
            hang_up(conn)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(clients)))
    time.sleep(0.5)  # the server notices the resets
    return Outcome(refused=True)


def connection_cases(tree: Tree) -> list[Case]:
    return [Case("200 simultaneous requests", "load", concurrent, hostile=False),
            Case("50 pipelined requests on one connection", "load", pipelined, hostile=False),
            Case("25 idle connections", "idle", idle),
            Case("25 connections trickling a request head", "idle", lambda s, t: idle(s, t, trickle=True)),
            Case("a kept-alive connection left idle", "idle", kept_alive_then_idle),
            Case("40 clients hanging up mid-response", "hangups", hang_ups)]


def suite(tree: Tree) -> list[Case]:
    return [*file_cases(tree), *link_cases(tree), *path_cases(tree), *request_cases(tree), *connection_cases(tree)]


def attempt(case: Case, server: PageServer, tree: Tree) -> Outcome:
    """Runs ``case``, then a good request; what the server printed on stderr meanwhile is a problem."""
    printed = len(server.stderr())
    try:
        outcome = case.attempt(server, tree)
    except OSError as e:  # the server refused a connection or reset one mid-answer
        outcome = Outcome([f"{type(e).__name__}: {e}"])
    content = tree.files["/bundle/capkit.json"][0]
    after = get(server.port, "/bundle/capkit.json")
    if after.status != 200 or after.body != content:
        outcome.problems.append(f"a good request after it was answered {after.status} (a result lost)")
        outcome.lost += 1
    if server.proc.poll() is not None:
        outcome.problems.append(f"the server exited with status {server.proc.returncode}")
    new = server.stderr()[printed:]
    if new.strip():
        outcome.problems.append(f"printed on stderr: {new.strip().splitlines()[-1][:160]!r}"
                                + (" (a traceback)" if "Traceback" in new else ""))
    return outcome


def run_cases(server: PageServer, tree: Tree, cases: list[Case]) -> list[Outcome]:
    return [attempt(case, server, tree) for case in cases]


def summary(cases: list[Case], outcomes: list[Outcome], server: Optional[PageServer] = None) -> dict[str, object]:
    return {
        "tried": len(cases),
        "hostile": sum(c.hostile for c in cases),
        "refused cleanly": sum(c.hostile and o.refused and not o.problems for c, o in zip(cases, outcomes)),
        "legal, served": sum(not c.hostile and not o.problems for c, o in zip(cases, outcomes)),
        "results lost": sum(o.lost for o in outcomes),
        "broken guarantees": sum(bool(o.problems) for o in outcomes),
        **({"server peak MB": round(server.peak_mb())} if server is not None else {}),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="capkit-hostile-web-") as tmp:
        tree = make_tree(Path(tmp))
        started = time.perf_counter()
        with PageServer(tree) as server:
            cases = suite(tree)
            outcomes = run_cases(server, tree, cases)
            for case, outcome in zip(cases, outcomes):
                mark = "ok " if not outcome.problems else "BAD"
                print(f"{mark} {case.group:8} {case.name[:70]!r:74} " + "; ".join(outcome.problems))
            counts = summary(cases, outcomes, server)
            traceback = "Traceback" in server.stderr()
        print(json.dumps(counts))
        print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 1 if counts["broken guarantees"] or traceback else 0


if __name__ == "__main__":
    sys.exit(main())
