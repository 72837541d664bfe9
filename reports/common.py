"""What the report scripts share: running capkit commands as subprocesses and showing them as typed,
random-weight checkpoints of a given size, exporting fp32 + int8 bundles, greedy scores from
``capkit eval --json``, and writing the marked section of a report page in docs/.

Importable as ``capkit.reports.common`` (reports/ is a namespace folder of the package), so a
script works both when run as a file and when a test imports it."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from capkit.runtime.errors import first_line

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"  # the report pages, one per script


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def capkit(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("capkit")
    return [str(script) if script.is_file() else sys.executable, *([] if script.is_file() else ["-m", "capkit"]), *args]


def display(command: list[str]) -> str:
    """A command as a reader would type it: `capkit ...`, paths as :func:`shown_path` shows them."""
    words = ["capkit" if i == 0 and w.endswith("capkit") else w for i, w in enumerate(command)]
    shown = [shown_path(w) for w in words]
    return " ".join("~/" + shlex.quote(w[2:]) if w.startswith("~/") else shlex.quote(w) for w in shown)


def shown_path(path: Any) -> str:
    """A path as a report page shows it: relative inside the repository, ``~/...`` under the home folder,
    else ``.../`` and its last three parts (the measuring machine's own folders mean nothing to a reader)."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    for root, shown in ((REPO, None), (Path.home(), "~")):
        if text == str(root) or text.startswith(str(root) + os.sep):
            relative = os.path.relpath(text, root)
            return relative if shown is None else f"{shown}/{relative}"
    return ".../" + "/".join(Path(text).parts[-3:])


# -- models and bundles ---------------------------------------------------------------------------------------------
def random_checkpoint(path: Path, model_fields: dict[str, Any], spec: Any, *, vocab_size: int, max_length: int,
                      run_name: str, fits: Callable[[dict[str, Any]], bool], what: str) -> Path:
    """A checkpoint of random weights (torch seed 0) at ``path``: the one already there when ``fits`` its
    payload and this version of the model code still loads it, else built and saved (``what`` names the
    model in the log). ``spec``: its PreprocessSpec; ``model_fields``: CaptionModelConfig fields."""
    import torch

    from capkit.training.checkpoint import checkpoint_payload, load_checkpoint, load_model, save_checkpoint

    if path.is_file() and fits(load_checkpoint(path)):
        try:
            load_model(path)  # still loadable by this version of the model code
            return path
        except Exception as e:
            say(f"{path}: rebuilding ({first_line(e)})")
    from capkit.models import CaptionModel, CaptionModelConfig
    from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

    say(f"building {what} with random weights (seed 0)")
    torch.manual_seed(0)
    vocab = Vocabulary(SPECIAL_TOKENS + tuple(f"word{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))))
    model = CaptionModel(CaptionModelConfig(vocab_size=vocab_size, **model_fields)).eval()
    save_checkpoint(checkpoint_payload(model, vocab, spec, max_length, run_name=run_name, epoch=0, step=0), path)
    return path


def export_bundles(checkpoint: Path, out: Path) -> tuple[Path, Path]:
    """fp32 and int8 bundles of ``checkpoint`` in ``out`` and ``out``-int8 (parity check included)."""
    command = capkit("export", "--checkpoint", str(checkpoint), "--out", str(out), "--quantize", "int8", "--json")
    say(f"$ {display(command)}")
    proc = subprocess.run(command, capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"export failed:\n{proc.stderr[-2000:]}") from None
    # exit status 1 with a report: the bundles are written but parity failed (a random model's near-ties can
    # flip an argmax); the benchmark still measures them, and says so
    say(f"exported in {report['seconds']:.0f}s; parity {'passed' if report['passed'] else 'FAILED'}")
    return out, out.with_name(out.name + "-int8")


# -- measurements ---------------------------------------------------------------------------------------------------
def run_json(command: list[str], what: str) -> dict[str, Any]:
    """The JSON document ``command`` prints; its progress goes straight to stderr. SystemExit when it fails."""
    say(f"$ {display(command)}")
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed")
    return json.loads(proc.stdout)


def greedy_scores(command: list[str]) -> dict[str, Any]:
    """Runs a ``capkit eval ... --json`` command; its greedy (temperature 0) BLEU-4 and CIDEr, the
    number of images, the dataset and the split. RuntimeError (the eval's last stderr line) when it fails."""
    say(f"$ {display(command)}")
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["?"])[-1])
    result = json.loads(proc.stdout)
    greedy = next(r for r in result["results"] if r["temperature"] == 0)
    return {"bleu4": greedy["bleu4"], "cider": greedy["cider"], "images": greedy["images"],
            "data": result["data"], "split": result["split"]}


# -- report pages ---------------------------------------------------------------------------------------------------
def add_report_arguments(parser: argparse.ArgumentParser, page: Path) -> None:
    """The options of every script that writes a report page: --print, --json FILE, --from-json FILE."""
    parser.add_argument("--print", dest="print_section", action="store_true",
                        help=f"print the section instead of writing it into {shown_path(page)}")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: render the section from a --json file written before")


def start_report(parser: argparse.ArgumentParser, page: Path,
                 work: Path) -> tuple[argparse.Namespace, float, Optional[dict[str, Any]]]:
    """The first steps of every script that writes a report page: the report options added to ``parser``
    and the command line parsed, the clock started, then :func:`prepare`. (args, start time from
    ``time.perf_counter``, the measurements of --from-json or None)."""
    add_report_arguments(parser, page)
    args = parser.parse_args()
    started = time.perf_counter()
    return args, started, prepare(args, work)


def replace_section(text: str, start: str, end: str, section: str) -> Optional[str]:
    """``text`` with everything from marker ``start`` to marker ``end`` replaced by ``section`` (which
    carries both markers); None when ``text`` lacks either marker."""
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + section + tail


def write_page(page: Path, title: str, start: str, end: str, section: str) -> None:
    """Writes ``section`` (markers included) into the report page ``page``: in place of the one between
    ``start`` and ``end`` (the page's other text kept), else at the page's end; a missing page is created
    with ``title`` as its heading."""
    text = page.read_text() if page.is_file() else f"# {title}\n"
    replaced = replace_section(text, start, end, section)
    page.write_text(replaced if replaced is not None else text.rstrip("\n") + f"\n\n{section}\n")


def prepare(args: argparse.Namespace, work: Path) -> Optional[dict[str, Any]]:
    """The start of a report script's run: the repository as the current folder (the commands it shows are
    typed from there) and its ``work`` folder made; the measurements of --from-json, or None to measure."""
    os.chdir(REPO)
    work.mkdir(parents=True, exist_ok=True)
    return json.loads(args.from_json.read_text()) if args.from_json is not None else None


def publish(args: argparse.Namespace, page: Path, title: str, start: str, end: str, section: str,
            measurements: dict[str, Any]) -> None:
    """What a report script does with its section (options of :func:`add_report_arguments`): ``measurements``
    to the --json file (unless they came from --from-json), then the section printed (--print) or written
    into ``page`` (see :func:`write_page`)."""
    if args.json is not None and args.from_json is None:
        args.json.write_text(json.dumps(measurements, indent=2) + "\n")
    if args.print_section:
        print(section)
    else:
        write_page(page, title, start, end, section)
        say(f"{shown_path(page)} updated")


__all__ = ["DOCS", "REPO", "add_report_arguments", "capkit", "display", "export_bundles", "greedy_scores",
           "prepare", "publish", "random_checkpoint", "replace_section", "run_json", "say", "shown_path", "start_report",
           "write_page"]
