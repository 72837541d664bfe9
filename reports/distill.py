#!/usr/bin/env python
"""Distilling the default model into the edge preset: for each seed, edge students trained alone and taught
by the seed's default run (``capkit train --preset edge --teacher RUN``), beside that teacher, scored on the
seed's test split: fact accuracy (the share of greedy captions stating the scene exactly right), greedy
BLEU-4 and CIDEr (``capkit eval --temps 0 --json``), and the minutes of training.

    .venv/bin/python reports/distill.py                      # seeds 0-2 on the demo data; writes docs/distill.md
    .venv/bin/python reports/distill.py --seeds 0 --print    # one seed, the table printed only

The teacher of seed N is the seed sweep's default run of that seed (reports/.cache/sweep/shapes/runs/seed-N,
trained first by ``reports/seed_sweep.py --seeds N`` when it is missing), so the teacher saw the same
synthetic set (``--seed N`` draws the data too). Each student is one ``capkit train`` process whose wall
time is its "train min" (the teacher's own training not counted: the issue's budget is "teacher given").
Every run's result is kept under reports/.cache/distill/ and reused, so a stopped report continues.
The goal (the edge issue): a distilled student within FACTS_GOAL points of its teacher's fact accuracy
and BLEU_GOAL of its greedy BLEU-4 on every seed, in under TIME_GOAL_MIN minutes of training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a file: the repository's parent makes `capkit` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capkit.reports.common import DOCS, REPO, capkit, display, publish, say, start_report  # noqa: E402

WORK = REPO / "reports" / ".cache" / "distill"
SWEEP = REPO / "reports" / ".cache" / "sweep"  # the seed sweep's runs: SWEEP / family / runs / seed-N
PAGE = DOCS / "distill.md"
PAGE_TITLE = "Distilling the default model into the edge preset"
MARK_START, MARK_END = "<!-- distill:start -->", "<!-- distill:end -->"
FACTS_GOAL = 0.03  # a distilled student's fact accuracy at most 3 points below its teacher's
BLEU_GOAL = 0.03  # ... and its greedy BLEU-4 at most this far below
TIME_GOAL_MIN = 10.0  # ... trained in under this many minutes on this machine (teacher given)
TEACHER = "{teacher}"  # stands for the seed's teacher run in VARIANTS' arguments
# The students, each `capkit train --preset edge --seed N` plus these arguments. The first is the edge preset
# as it is; the rest are what the report compares it with.
VARIANTS: dict[str, list[str]] = {
    "edge": [],
    "edge, distilled": ["--teacher", TEACHER],
}


def key(family: str, seed: int) -> str:
    """A run's name in the cache: "seed-N" on the demo data, "objects-seed-N" on the objects family."""
    return f"seed-{seed}" if family == "shapes" else f"{family}-seed-{seed}"


def teacher_run(family: str, seed: int) -> Path:
    """The seed sweep's default run of ``seed`` on ``family``, trained first when missing."""
    run = SWEEP / family / "runs" / f"seed-{seed}"
    if not (run / "best.pt").is_file():
        say(f"{family} seed {seed}: no default run to teach; training it with the seed sweep")
        subprocess.run([sys.executable, str(REPO / "reports" / "seed_sweep.py"), "--family", family, "--seeds",
                        str(seed), "--print"], check=True, stdout=subprocess.DEVNULL)
    return run


def data_args(family: str, seed: int) -> list[str]:
    """``capkit train``'s --data for a family's set of ``seed`` (none for the demo's: ``--seed`` draws it)."""
    from capkit.reports.seed_sweep import family_data

    folder = family_data(family, seed, progress=False)
    return [] if folder is None else ["--data", folder]


def scores(run: Path) -> dict[str, Any]:
    """Greedy BLEU-4, CIDEr and fact accuracy of ``run``'s best checkpoint on its test split."""
    command = capkit("eval", "--checkpoint", str(run), "--temps", "0", "--json")
    say(f"$ {display(command)}")
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"eval of {run} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    greedy = next(r for r in json.loads(proc.stdout)["results"] if r["temperature"] == 0)
    return {"bleu4": greedy["bleu4"], "cider": greedy["cider"], "facts": (greedy.get("facts") or {}).get("exact")}


def slug(name: str) -> str:
    """A variant's name in file names: "edge, distilled" -> "edge-distilled"."""
    return name.replace(", ", "-").replace(" ", "-")


def student(family: str, seed: int, name: str, threads: Optional[int], alone: bool = False) -> dict[str, Any]:
    """One student of ``seed`` (VARIANTS[name]) on ``family``: trained (timed) and scored, from the cache when there.
    ``alone``: the run that times the budget, made with every thread while nothing else runs (its own cache entry)."""
    run_name = f"{key(family, seed)}-{slug(name)}" + ("-alone" if alone else "")
    cached = WORK / f"{run_name}.json"
    if cached.is_file():
        return {"family": "shapes", "alone": False, **json.loads(cached.read_text())}
    teacher = teacher_run(family, seed)
    extra = [str(teacher) if a == TEACHER else a for a in VARIANTS[name]]
    command = capkit("train", "--preset", "edge", "--seed", str(seed), *data_args(family, seed), "--out",
                     str(WORK / "runs"), "--name", run_name, "--no-progress", *extra)
    say(f"$ {display(command)}")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    minutes = (time.perf_counter() - started) / 60
    if proc.returncode != 0:
        raise SystemExit(f"training {name} for seed {seed} failed")
    row = {"family": family, "seed": seed, "model": name, "args": " ".join(VARIANTS[name]), "alone": alone,
           "train_minutes": round(minutes, 2),
           **scores(Path(proc.stdout.strip().splitlines()[-1]))}
    WORK.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row, indent=1) + "\n")
    return row


def teacher_row(family: str, seed: int) -> dict[str, Any]:
    cached = WORK / f"{key(family, seed)}-teacher.json"
    if not cached.is_file():
        run = teacher_run(family, seed)
        WORK.mkdir(parents=True, exist_ok=True)
        minutes = json.loads((run.parent.parent / f"seed-{seed}.json").read_text())["train_minutes"]
        cached.write_text(json.dumps({"family": family, "seed": seed, "model": "default (the teacher)", "args": "",
                                      "train_minutes": minutes, **scores(run)}, indent=1) + "\n")
    return {"family": "shapes", **json.loads(cached.read_text())}


def verdict(row: dict[str, Any], teacher: dict[str, Any], minutes: Optional[float] = None) -> str:
    """"yes" when ``row`` is within the goal of its teacher's scores, trained in under TIME_GOAL_MIN minutes
    (``minutes``: the same student's time when trained alone, where the row's own was on shared cores)."""
    if row["model"] == teacher["model"]:
        return ""
    minutes = row["train_minutes"] if minutes is None else minutes
    met = (row["facts"] is not None and teacher["facts"] is not None and row["facts"] >= teacher["facts"] - FACTS_GOAL
           and row["bleu4"] >= teacher["bleu4"] - BLEU_GOAL and minutes < TIME_GOAL_MIN)
    return "yes" if met else "no"


def render(rows: list[dict[str, Any]], command: str) -> str:
    lines = [MARK_START, f"```\n{command}\n```", "",
             "| data | seed | model | facts exactly right | greedy BLEU-4 | CIDEr | train min | within the goal |",
             "|---|---|---|---|---|---|---|---|"]
    teachers = {(r["family"], r["seed"]): r for r in rows if r["model"].startswith("default")}
    timed = {(r["family"], r["model"]): r["train_minutes"] for r in rows if r.get("alone")}  # the budget's timing
    for r in rows:
        facts = "" if r["facts"] is None else f"{r['facts']:.1%}"
        data = "demo" if r["family"] == "shapes" else r["family"]
        model = r["model"] + (" (timed alone)" if r.get("alone") else "")
        within = verdict(r, teachers[r["family"], r["seed"]], timed.get((r["family"], r["model"])))
        lines.append(f"| {data} | {r['seed']} | {model} | {facts} | {r['bleu4']:.3f} | {r['cider']:.3f} | "
                     f"{r['train_minutes']:.1f} | {within} |")
    lines += ["", f"Within the goal: fact accuracy at most {FACTS_GOAL * 100:.0f} points and greedy BLEU-4 at most "
                  f"{BLEU_GOAL} below the seed's teacher, trained in under {TIME_GOAL_MIN:.0f} minutes "
                  "(the teacher given). The time is judged on the student's run timed alone (every thread, nothing "
                  "else running) where there is one; the others' train min is wall time while several trainings "
                  "shared the cores, one thread each."]
    for name in VARIANTS:
        if name != "edge":
            seeds = [r for r in rows if r["model"] == name and r["family"] == "shapes" and not r.get("alone")]
            met = sum(verdict(r, teachers[r["family"], r["seed"]], timed.get((r["family"], name))) == "yes"
                      for r in seeds)
            lines.append(f"{name}: {met} of {len(seeds)} seeds of the demo data within the goal.")
    return "\n".join([*lines, MARK_END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--objects-seeds", default="0", help="seeds on the objects family (its sweep run teaches)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each training [default: all]")
    parser.add_argument("--time-alone", action="store_true",
                        help="also train the first demo seed's distilled student with every thread, to time the "
                             "budget (run it with nothing else running)")
    parser.add_argument("--variants", default=",".join(slug(name) for name in VARIANTS),
                        help="the students to train where not cached [default: all: "
                             f"{','.join(slug(name) for name in VARIANTS)}]")
    args, _, measured = start_report(parser, PAGE, WORK)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    slugs = {slug(name): name for name in VARIANTS}
    if unknown := [s for s in args.variants.split(",") if s not in slugs]:
        raise SystemExit(f"--variants: unknown {unknown[0]!r} (known: {','.join(slugs)})")
    wanted = [slugs[s] for s in args.variants.split(",")]
    runs = [("shapes", seed) for seed in seeds] + [("objects", int(s)) for s in args.objects_seeds.split(",") if s]
    if measured is None:
        rows = []
        for family, seed in runs:
            rows.append(teacher_row(family, seed))
            rows += [student(family, seed, name, args.threads) for name in VARIANTS
                     if name in wanted or (WORK / f"{key(family, seed)}-{slug(name)}.json").is_file()]
            alone = WORK / f"{key(family, seed)}-edge-distilled-alone.json"
            if family == "shapes" and (alone.is_file() or args.time_alone and seed == seeds[0]):
                rows.append(student(family, seed, "edge, distilled", None, alone=True))
        measured = {"rows": rows, "command": f".venv/bin/python reports/distill.py --seeds {args.seeds} "
                                             f"--objects-seeds '{args.objects_seeds}'"}
    publish(args, PAGE, PAGE_TITLE, MARK_START, MARK_END, render(measured["rows"], measured["command"]), measured)


if __name__ == "__main__":
    main()
