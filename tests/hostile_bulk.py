"""A generated corpus of hostile inputs for bulk runs (``capkit caption SOURCE... --out FILE``): output files,
file names, listings, globs, special files as inputs, and runs killed or interrupted midway; each case run in
fresh processes under a memory limit, with its peak memory and wall time measured.

Used by tests/test_hostile_bulk.py (every case must hold) and runnable on its own for the README's
reliability counts:

    .venv/bin/python tests/hostile_bulk.py        # builds a tiny random bundle, prints the table

A case holds when every process exits 0, 1 or 2 (130 for the one it interrupts with Ctrl-C; never another
signal, never the CLI's last-resort status 70), prints no traceback, stays under PEAK_MB of resident memory
and WALL_S seconds, and leaves an output file of whole capkit lines (valid UTF-8, JSON, each image at most
once), and:

* an ``--out`` that is not capkit's (a device, a FIFO, a picture, a 300 MB line ...) is refused: an
  ``Error:`` line, and the file is untouched;
* the good image beside a hostile input still has its line, exactly once, with its caption (a result lost
  otherwise); a case run twice writes nothing the second time;
* a run killed (``kill -9``) or interrupted (Ctrl-C) midway, then rerun, leaves the very file of an
  uninterrupted run, byte for byte (results lost otherwise).

"Refused cleanly": a hostile case that held (its input refused, or reported in an error line, exit 1);
"legal, handled": an odd but legal input (a BOM, a name that is not UTF-8, a glob over link loops) that held
with exit 0.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


import hostile_corpus as corpus  # noqa: E402  the tiny bundle, the good image, the bounds
PEAK_MB, WALL_S, SAFETY_NET_BYTES, UNEXPECTED_EXIT = (corpus.PEAK_MB, corpus.WALL_S, corpus.SAFETY_NET_BYTES,
                                                      corpus.UNEXPECTED_EXIT)
HUGE = 300 << 20  # a 300 MB line: sparse files, nothing written to disk
INTERRUPTED_IMAGES = 1200
DEEP = 1500  # folders, one in the other: deeper than Python's recursion limit

# Like hostile_corpus's launcher, and it can send the command a signal once ``watch`` holds ``after`` bytes.
LAUNCHER = r"""
import json, os, resource, subprocess, sys, time
command, limit, timeout, watch, after, signum = json.loads(sys.argv[1])
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
started = time.perf_counter()
proc = subprocess.Popen(command, preexec_fn=cap, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
sent = False
while watch and proc.poll() is None and time.perf_counter() - started < timeout:
    if os.path.exists(watch) and os.path.getsize(watch) >= after:
        proc.send_signal(signum)
        sent = True
        break
    time.sleep(0.002)
try:
    out, err = proc.communicate(timeout=timeout)
except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"status": proc.returncode, "wall": wall, "peak_mb": usage.ru_maxrss / 1024.0, "sent": sent,
                  "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}))
"""


@dataclass
class Case:
    name: str
    group: str  # output | names | listing | glob | input | interrupt
    sources: list[str]
    out: Path
    hostile: bool = True  # True: exit 1 (refused, or an error line); False: a legal input, exit 0
    refused: bool = False  # the --out itself is refused (one Error: line, the file untouched); no lines written
    keeps_good: bool = True  # the good image's line must be in --out exactly once
    runs: int = 1  # 2: run again; the second run must write nothing
    interrupt: Optional[int] = None  # a signal sent once --out holds `after` bytes, then the command is rerun
    after: int = 1
    reference: Optional[Path] = None  # with interrupt: the uninterrupted run's file, which --out must equal
    options: list[str] = field(default_factory=list)  # more options for `capkit caption`


@dataclass
class Outcome:
    status: int
    wall: float
    peak_mb: float
    stderr: str
    sent: bool = False


@dataclass
class Result:
    outcomes: list[Outcome]
    problems: list[str] = field(default_factory=list)

    @property
    def peak_mb(self) -> float:
        return max(o.peak_mb for o in self.outcomes)

    @property
    def wall(self) -> float:
        return max(o.wall for o in self.outcomes)


def launch(args: list[str], watch: Optional[Path] = None, after: int = 1, signum: int = 0,
           timeout: float = WALL_S + 30) -> Outcome:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("CAPKIT_DEBUG", None)  # the user's view: the last-resort guard answers, with status 70
    command = [*corpus.capkit_command(), "caption", *args]
    spec = json.dumps([command, SAFETY_NET_BYTES, timeout, str(watch) if watch else None, after, signum])
    proc = subprocess.run([sys.executable, "-S", "-I", "-c", LAUNCHER, spec], capture_output=True, text=True,
                          env=env, timeout=timeout + 60)
    data = json.loads(proc.stdout)
    return Outcome(data["status"], data["wall"], data["peak_mb"], data["stderr"], data["sent"])


# -- the corpus --------------------------------------------------------------------------------------------------------
def sparse(path: Path, head: bytes = b"", size: int = HUGE, tail: bytes = b"") -> Path:
    """``head``, then NULs up to ``size`` bytes (a hole: no disk used), then ``tail``."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
        f.seek(size)
        f.write(tail)
    return path


def capkit_line(image: str) -> bytes:
    return json.dumps({"image": image, "error": f"{image}: no such file"}).encode() + b"\n"


def output_cases(root: Path, good: Path) -> list[Case]:
    folder = root / "outputs"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48), (9, 99, 199)).save(folder / "picture.png")
    (folder / "garbage.jsonl").write_bytes(os.urandom(65536))
    (folder / "table.csv").write_text("name,value\nx,1\n")
    (folder / "array.jsonl").write_text("[1, 2, 3]\n")
    sparse(folder / "nul-300mb.jsonl")
    sparse(folder / "tail-300mb.jsonl", head=capkit_line("a.png"))
    sparse(folder / "line-2-of-300mb.jsonl", head=capkit_line("a.png"), tail=b"\n")
    os.symlink("/dev/zero", folder / "zero-link.jsonl")
    os.mkfifo(folder / "fifo.jsonl")
    os.symlink("loop.jsonl", folder / "loop.jsonl")
    (folder / "folder.jsonl").mkdir()
    refused = ["/dev/zero", "/dev/full", "/dev/null", *(str(folder / name) for name in (
        "zero-link.jsonl", "fifo.jsonl", "loop.jsonl", "folder.jsonl", "picture.png", "garbage.jsonl", "table.csv",
        "array.jsonl", "nul-300mb.jsonl", "tail-300mb.jsonl", "line-2-of-300mb.jsonl", "missing/out.jsonl"))]
    cases = [Case(f"--out {Path(out).name if out.startswith(str(folder)) else out}", "output", [str(good)], Path(out),
                  refused=True, keeps_good=False) for out in refused]
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "compact.jsonl").write_text('{"image":"a.png","error":"a.png: no such file"}\n')  # as `jq -c` writes
    (folder / "torn.jsonl").write_bytes(capkit_line("a.png") + b'{"image": "b.png", "capt')
    (folder / "odd-lines.jsonl").write_bytes(capkit_line("a.png") + b"not json\n\xff\xfe\n[]\n")
    for name in ("empty.jsonl", "compact.jsonl", "torn.jsonl", "odd-lines.jsonl"):
        cases.append(Case(f"--out {name} (resumed)", "output", [str(good)], folder / name, hostile=False))
    return cases


def name_cases(root: Path, good: Path) -> list[Case]:
    folder = root / "names"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"caf\xe9-\xff\xfe.png")  # not UTF-8
    shutil.copy(good, odd)
    shutil.copy(good, folder / "x.png")
    os.symlink("x.png", folder / "link.png")
    shutil.copy(good, folder / "new\nline\ttab.png")
    shutil.copy(good, folder / ("n" * 251 + ".png"))  # NAME_MAX
    long_listing = folder / "long-name.txt"
    long_listing.write_text("d/" * 30_000 + "x.png\n" + f"{good}\n")
    same = [f"{folder}/./x.png", str(folder / "x.png"), str(folder / "link.png"), f"{folder}/../names/x.png",
            f"{folder}//x.png"]
    return [
        Case("a name that is not UTF-8, run twice", "names", [str(good), os.fsdecode(odd), str(folder)],
             root / "names-utf8.jsonl", hostile=False, runs=2),
        Case("one image by five names, run twice", "names", [str(good), *same], root / "names-same.jsonl",
             hostile=False, runs=2),
        Case("names with a newline and a tab, NAME_MAX", "names", [str(good), str(folder)], root / "names-odd.jsonl",
             hostile=False, runs=2),
        Case("a listed name of 60,000 characters", "names", [str(long_listing)], root / "names-long.jsonl"),
    ]


def listing_cases(root: Path, good: Path) -> list[Case]:
    folder = root / "listings"
    folder.mkdir()
    g = str(good)
    texts = {
        "long-line.txt": "x" * 100_000 + f"\n{g}\n",
        "bom.txt": f"\ufeff{g}\n",
        "nul.txt": f"a\0b.png\n{g}\n",
        "not-json.jsonl": "{oops\n" + json.dumps({"image": g}) + "\n",
        "nested.jsonl": "[" * 60_000 + "\n" + json.dumps({"image": g}) + "\n",
        "big-number.jsonl": '{"image": ' + "9" * 50_000 + "}\n" + json.dumps({"path": g}) + "\n",
        "bom.jsonl": "\ufeff" + json.dumps({"image": g}) + "\n",
        "no-column.csv": "name\nx.png\n",
        "big-field.csv": "image,note\nx.png," + "y" * 200_000 + f"\n{g},ok\n",
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    sparse(folder / "unterminated-50mb.txt", head=f"{g}\n".encode(), size=50 << 20)
    sparse(folder / "open-quote.csv", head=f'image\n{g}\n"'.encode(), size=20 << 20)
    os.symlink("/dev/zero", folder / "zero.txt")
    os.mkfifo(folder / "fifo.txt")
    with open(folder / "paths-200000.txt", "w") as f:
        for i in range(200_000):
            f.write(f"/nonexistent/capkit-hostile/some/longer/folder/name/image-{i:07d}.jpg\n")
    legal = {"bom.txt", "bom.jsonl"}
    beside = {"no-column.csv", "zero.txt", "fifo.txt", "paths-200000.txt"}  # the good image is not in them
    return [Case(f"listing {name}", "listing", [str(folder / name)] + ([g] if name in beside else []),
                 root / f"listing-{name}.jsonl", hostile=name not in legal)
            for name in [*texts, "unterminated-50mb.txt", "open-quote.csv", "zero.txt", "fifo.txt", "paths-200000.txt"]]


def glob_cases(root: Path, good: Path) -> list[Case]:
    folder = root / "globs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(good, folder / "sub" / "a.png")
    os.symlink(".", folder / "self-1")
    os.symlink(".", folder / "self-2")
    os.symlink("..", folder / "sub" / "up")
    loops = root / "glob-loop"
    loops.mkdir()
    shutil.copy(good, loops / "a.png")
    os.symlink("loop.png", loops / "loop.png")
    deep = root / "glob-deep"
    for _ in range(DEEP):
        deep.mkdir()
        deep = deep / "d"
    deep.mkdir()
    shutil.copy(good, deep / "a.png")
    return [
        Case("glob ** over two links to its own folder", "glob", [str(good), f"{folder}/**/*.png"],
             root / "glob-links.jsonl", hostile=False),
        Case("glob ** over a link loop", "glob", [str(good), f"{loops}/**/*.png"], root / "glob-loop.jsonl"),
        Case(f"glob ** over {DEEP} nested folders", "glob", [str(good), f"{root}/glob-deep/**/*.png"],
             root / "glob-deep.jsonl", hostile=False),
    ]


def input_cases(root: Path, good: Path) -> list[Case]:
    folder = root / "inputs"
    folder.mkdir()
    os.mkfifo(folder / "fifo.png")
    os.symlink("loop.png", folder / "loop.png")
    os.symlink("/dev/zero", folder / "zero.png")
    inputs = {"/dev/zero": "/dev/zero", "FIFO": str(folder / "fifo.png"), "link loop": str(folder / "loop.png"),
              "link to /dev/zero": str(folder / "zero.png")}
    return [Case(f"input {name}", "input", [str(good), path], root / f"input-{i}.jsonl")
            for i, (name, path) in enumerate(inputs.items())]


def interrupt_cases(root: Path, good: Path) -> list[Case]:
    """A listing of INTERRUPTED_IMAGES images (24 different, hard-linked), its uninterrupted run, and runs
    stopped by kill -9 or Ctrl-C after the first group of lines and midway."""
    from PIL import Image

    folder = root / "many"
    folder.mkdir()
    names = []
    for i in range(INTERRUPTED_IMAGES):
        path = folder / f"i{i:05d}.png"
        if i < 24:
            Image.new("RGB", (40 + i, 30), (10 * i, 200 - 5 * i, 90)).save(path)
        else:
            os.link(folder / f"i{i % 24:05d}.png", path)
        names.append(str(path))
    listing = root / "many.txt"
    listing.write_text("\n".join([str(good), *names]) + "\n")
    reference = root / "many-uninterrupted.jsonl"
    batches = ["--batch-size", "9"]  # lines are written in groups of 64: a resumed run starts mid-batch
    cases = [Case("the uninterrupted run (the reference)", "interrupt", [str(listing)], reference, hostile=False,
                  options=batches)]
    for label, signum in (("kill -9", signal.SIGKILL), ("Ctrl-C", signal.SIGINT)):
        for when, after in (("after the first group", 1), ("midway", 60_000)):
            cases.append(Case(f"{label} {when}, then rerun", "interrupt", [str(listing)],
                              root / f"many-{signum}-{after}.jsonl", hostile=False, interrupt=signum, after=after,
                              reference=reference, options=batches))
    return cases


def make_corpus(root: Path, good: Path) -> list[Case]:
    return [*output_cases(root, good), *name_cases(root, good), *listing_cases(root, good), *glob_cases(root, good),
            *input_cases(root, good), *interrupt_cases(root, good)]


# -- judging -----------------------------------------------------------------------------------------------------------
def file_state(path: Path) -> Optional[tuple[int, int]]:
    """A regular file's (size, mtime): any write or truncation changes it."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns) if os.path.isfile(path) else None


def read_output(out: Path, problems: list[str], earlier: set[bytes]) -> list[dict]:
    """The lines of a bulk run's output, each checked (valid UTF-8, a JSON object naming an image, each image
    once), with ``image`` the exact name; the ``earlier`` lines (there before the case) are left out."""
    rows: list[dict] = []
    if not os.path.isfile(out):
        return rows
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        problems.append("a torn last line")
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), 1):
        if raw in earlier:
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            name = os.fsdecode(base64.b64decode(row["image_bytes"])) if "image_bytes" in row else row["image"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {number} is not a capkit line: {raw[:80]!r}")
            continue
        key = os.path.realpath(name) if "\0" not in name else name
        if key in seen:
            problems.append(f"{name!r} written twice")
        seen.add(key)
        rows.append({**row, "image": name})
    return rows


def judge(case: Case, result: Result, good_row: dict, before: Optional[tuple[int, int]], earlier: set[bytes]) -> Result:
    """Fills ``result.problems``: every way the case broke a guarantee. ``before``: the --out file's state before
    the case, ``earlier``: its lines (an odd output file given on purpose keeps its odd lines)."""
    p = result.problems
    for i, o in enumerate(result.outcomes):
        interrupted = case.interrupt is not None and i == 0
        allowed = {0, 1, 2} | ({130} if interrupted and case.interrupt == signal.SIGINT else set())
        if o.status not in allowed and not (interrupted and o.status == -case.interrupt):
            p.append(f"exit status {o.status}" + (" (the last-resort guard)" if o.status == UNEXPECTED_EXIT else ""))
        if "Traceback" in o.stderr:
            p.append("traceback")
        if o.peak_mb > PEAK_MB:
            p.append(f"peak memory {o.peak_mb:.0f} MB > {PEAK_MB} MB")
        if o.wall > WALL_S:
            p.append(f"wall time {o.wall:.1f} s > {WALL_S} s")
        if interrupted and not o.sent:
            p.append("the run ended before it could be interrupted")
    final = result.outcomes[-1]
    errors = [line for line in final.stderr.splitlines() if line.startswith("Error")]
    if case.refused:
        if final.status not in (1, 2) or len(errors) != 1:
            p.append(f"not refused in one Error: line (exit {final.status}, {len(errors)} Error lines)")
        if before is not None and file_state(case.out) != before:
            p.append("the file was changed")
        return result
    if final.status != (1 if case.hostile else 0):
        p.append(f"exit {final.status}, expected {1 if case.hostile else 0}: {final.stderr.strip()[-200:]!r}")
    rows = read_output(case.out, p, earlier)
    if case.keeps_good:
        mine = [r for r in rows if r["image"] == good_row["image"]]
        if len(mine) != 1 or any(r.get(k) != good_row[k] for r in mine for k in ("caption", "tokens")):
            p.append(f"the good image's line is missing or wrong ({len(mine)} lines): a result lost")
    if case.runs > 1 and "captioned 0 images, 0 failed" not in final.stderr:
        p.append(f"the second run wrote lines again: {final.stderr.strip()[-120:]!r}")
    if case.reference is not None and case.out.read_bytes() != case.reference.read_bytes():
        p.append("after the rerun the file differs from the uninterrupted run's: a result lost or changed")
    return result


def attempt(case: Case, bundle: Path, good_row: dict) -> Result:
    args = [*case.sources, "--out", str(case.out), "--model", str(bundle), "--device", "cpu", *case.options]
    before = file_state(case.out)
    earlier = set(case.out.read_bytes().splitlines()) if before and before[0] < 1 << 20 else set()
    outcomes = []
    if case.interrupt is not None:
        outcomes.append(launch(args, watch=case.out, after=case.after, signum=case.interrupt))
    for _ in range(case.runs):
        outcomes.append(launch(args))
    return judge(case, Result(outcomes), good_row, before, earlier)


def run_corpus(root: Path, bundle: Path, workers: int = 2, groups: Optional[list[str]] = None
               ) -> tuple[list[Case], list[Result]]:
    """Every case (of ``groups``, or all) in its own processes (``workers`` cases at a time); results in the
    order of the cases. The uninterrupted run of the interrupted listing goes first: the others are compared
    with it."""
    from concurrent.futures import ThreadPoolExecutor

    good = corpus.good_image(root / "good")
    good_row = _good_row(root, bundle, good)
    cases = [c for c in make_corpus(root, good) if not groups or c.group in groups]
    first = [c for c in cases if c.group == "interrupt" and c.reference is None]
    results = {id(c): attempt(c, bundle, good_row) for c in first}
    rest = [c for c in cases if id(c) not in results]
    with ThreadPoolExecutor(workers) as pool:
        results.update(zip(map(id, rest), pool.map(lambda c: attempt(c, bundle, good_row), rest)))
    return cases, [results[id(c)] for c in cases]


def _good_row(root: Path, bundle: Path, good: Path) -> dict:
    """The good image's line, from a bulk run of it alone."""
    out = root / "good.jsonl"
    outcome = launch([str(good), "--out", str(out), "--model", str(bundle), "--device", "cpu"])
    if outcome.status != 0:
        raise RuntimeError(f"the good image does not caption in a bulk run: {outcome.stderr}")
    return json.loads(out.read_text())


def summary(cases: list[Case], results: list[Result]) -> dict[str, object]:
    held = [not r.problems for r in results]
    return {
        "tried": len(cases),
        "hostile": sum(c.hostile for c in cases),
        "refused cleanly": sum(c.hostile and h for c, h in zip(cases, held)),
        "legal, handled": sum(not c.hostile and h for c, h in zip(cases, held)),
        "results lost": sum(any("result" in p for p in r.problems) for r in results),
        "broken guarantees": sum(not h for h in held),
        "max peak MB": round(max(r.peak_mb for r in results)),
        "max wall s": round(max(r.wall for r in results), 1),
    }


def remove_tree(top: Path) -> None:
    """Removes ``top`` without recursion: shutil.rmtree recurses once a folder, and glob-deep is deeper than
    Python's recursion limit."""
    stack = [str(top)]
    while stack:
        with os.scandir(stack[-1]) as entries:
            below = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        if below:
            stack.extend(below)
            continue
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                os.unlink(entry.path)
        os.rmdir(folder)


def main(groups: list[str]) -> int:
    """Runs the corpus (only ``groups``' cases, if any are named) and prints its table and counts."""
    root = Path(tempfile.mkdtemp(prefix="capkit-hostile-bulk-"))
    try:
        bundle = corpus.tiny_bundle(root / "bundle")
        started = time.perf_counter()
        cases, results = run_corpus(root, bundle, groups=groups)
        if not cases:
            print(f"hostile_bulk.py: no cases in the groups {' '.join(groups)} (name groups of the corpus, or none for "
                  "all)", file=sys.stderr)
            return 2
        for case, result in zip(cases, results):
            mark = "ok " if not result.problems else "BAD"
            last = (result.outcomes[-1].stderr.strip().splitlines() or [""])[-1]
            print(f"{mark} {case.name[:44]:44} exit {result.outcomes[-1].status:>3}  {result.peak_mb:6.0f} MB  "
                  f"{result.wall:5.1f} s  " + ("; ".join(result.problems) or last[:90]))
        print(json.dumps(summary(cases, results)))
        print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 1 if any(r.problems for r in results) else 0
    finally:
        remove_tree(root)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))  # e.g. `tests/hostile_bulk.py output interrupt`
