"""What a benchmark reports: :class:`TargetReport` (one captioner), :class:`ColdStart` (fresh
processes), :class:`BenchReport` (the machine, the settings, the targets and their ratios), the
ratios of two targets (:func:`compare`) and the text or markdown tables (:func:`render_text`).

Every ratio is computed from the medians reported next to it, so that it can be checked against them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from capkit.bench.stats import Stats


@dataclass
class ColdStart:
    """Fresh ``capkit caption`` processes: wall time (s) and the largest peak resident memory (MB)."""

    command: list[str]
    wall: Stats  # seconds
    peak_rss_mb: Optional[float]  # None where the platform cannot tell (no os.wait4)
    output: str  # the caption the last run printed, to show it worked

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "wall": self.wall.to_dict(), "peak_rss_mb": self.peak_rss_mb,
                "output": self.output}


@dataclass
class TargetReport:
    """The figures of one target: an ONNX bundle or the PyTorch eager model (see :mod:`capkit.bench`)."""

    name: str  # e.g. "onnx fp32", "onnx int8", "pytorch eager"
    runtime: str  # onnxruntime | pytorch
    precision: str  # fp32 | int8 | fp16
    device: str
    threads: dict[str, Any]
    encoder: Stats  # ms, batch 1
    step: Stats  # ms per step of a chain of the inference's greedy steps, batch 1, as the loop calls them
    loop: Stats  # ms, batch 1, the decode loop from an encoded state, back to back
    decode: Stats  # ms, batch 1, the decode loop right after the caption's encoder run
    cold_step: Stats  # ms per step of a chain of those steps right after an encoder run
    steps: float  # steps per caption in the decode runs (max_length when captions never end)
    caption: Stats  # ms, end to end per image at batch 1
    preprocess: Stats  # ms per image: read the file and preprocess it
    throughput: dict[int, Stats]  # images/s by batch size, from image files (read and preprocessed in turn)
    model_throughput: dict[int, Stats]  # images/s by batch size, from preprocessed images: the encoder and the loop
    encoder_per_image: dict[int, Stats]  # ms per image of the encoder, by batch size
    source: str = ""  # the bundle folder or checkpoint
    size_bytes: Optional[int] = None  # the bundle's graphs and their external data
    cold_start: Optional[ColdStart] = None
    notes: list[str] = field(default_factory=list)
    phone_caption: Optional[Stats] = None  # ms, end to end per phone-size photo (a 12 MP JPEG) at batch 1
    phone_preprocess: Optional[Stats] = None  # ms per phone-size photo: read the file and preprocess it

    @property
    def phone_ratio(self) -> Optional[float]:
        """phone photo caption / caption, medians: how many times a regular photo's caption a phone photo's takes."""
        if self.phone_caption is None:
            return None
        return self.phone_caption.median / max(self.caption.median, 1e-12)

    @property
    def loop_overhead(self) -> float:
        """loop / (steps x isolated step): 1.0 means the Python loop adds nothing to the steps' own time."""
        return self.loop.median / max(self.steps * self.step.median, 1e-12)

    @property
    def decode_overhead(self) -> float:
        """decode / (steps x cold step), both right after an encoder run: the loop's overhead in a caption."""
        return self.decode.median / max(self.steps * self.cold_step.median, 1e-12)

    def batch_speedup(self, batch_size: int) -> Optional[float]:
        """Images/s at ``batch_size`` over images/s at batch 1 (None when either was not measured)."""
        if batch_size not in self.throughput or 1 not in self.throughput:
            return None
        return self.throughput[batch_size].median / self.throughput[1].median

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "runtime": self.runtime, "precision": self.precision, "device": self.device,
            "threads": self.threads, "source": self.source, "size_bytes": self.size_bytes,
            "encoder_ms": self.encoder.to_dict(), "step_ms": self.step.to_dict(), "loop_ms": self.loop.to_dict(),
            "decode_ms": self.decode.to_dict(), "cold_step_ms": self.cold_step.to_dict(), "steps": self.steps,
            "loop_overhead": self.loop_overhead,
            "decode_overhead": self.decode_overhead, "caption_ms": self.caption.to_dict(),
            "preprocess_ms": self.preprocess.to_dict(),
            "throughput": {str(b): s.to_dict() for b, s in sorted(self.throughput.items())},
            "model_throughput": {str(b): s.to_dict() for b, s in sorted(self.model_throughput.items())},
            "encoder_ms_per_image": {str(b): s.to_dict() for b, s in sorted(self.encoder_per_image.items())},
            "batch_speedup": {str(b): self.batch_speedup(b) for b in sorted(self.throughput) if b != 1
                              and self.batch_speedup(b) is not None},
            "cold_start": self.cold_start.to_dict() if self.cold_start is not None else None,
            "notes": list(self.notes),
            "phone_caption_ms": self.phone_caption.to_dict() if self.phone_caption is not None else None,
            "phone_preprocess_ms": self.phone_preprocess.to_dict() if self.phone_preprocess is not None else None,
            "phone_ratio": self.phone_ratio,
        }


def compare(baseline: TargetReport, target: TargetReport) -> dict[str, Any]:
    """How many times better ``target`` is than ``baseline``, from the medians reported (> 1: better).

    Times (encoder, step, decode, caption, cold start) and memory and size: baseline / target.
    Throughput per batch size: target / baseline."""
    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b not in (None, 0) else None

    ratios: dict[str, Any] = {
        "encoder": ratio(baseline.encoder.median, target.encoder.median),
        "step": ratio(baseline.step.median, target.step.median),
        "loop": ratio(baseline.loop.median, target.loop.median),
        "decode": ratio(baseline.decode.median, target.decode.median),
        "caption": ratio(baseline.caption.median, target.caption.median),
        "throughput": {str(b): ratio(target.throughput[b].median, baseline.throughput[b].median)
                       for b in sorted(set(baseline.throughput) & set(target.throughput))},
        "model_throughput": {str(b): ratio(target.model_throughput[b].median, baseline.model_throughput[b].median)
                             for b in sorted(set(baseline.model_throughput) & set(target.model_throughput))},
    }
    if baseline.cold_start is not None and target.cold_start is not None:
        ratios["cold_start"] = ratio(baseline.cold_start.wall.median, target.cold_start.wall.median)
        ratios["peak_rss"] = ratio(baseline.cold_start.peak_rss_mb, target.cold_start.peak_rss_mb)
    if baseline.size_bytes and target.size_bytes:
        ratios["size"] = ratio(float(baseline.size_bytes), float(target.size_bytes))
    return {"baseline": baseline.name, "target": target.name, "ratios": ratios}


@dataclass
class BenchReport:
    """One ``capkit bench`` run: the machine (:func:`~capkit.bench.stats.machine_info`), the settings,
    the targets in the order measured, and the load average after them."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    targets: list[TargetReport]
    load_after: Optional[list[float]] = None

    def comparisons(self) -> list[dict[str, Any]]:
        """Each ONNX target against PyTorch eager; each ONNX int8/fp16 target against the ONNX fp32 one."""
        pytorch = next((t for t in self.targets if t.runtime == "pytorch"), None)
        fp32 = next((t for t in self.targets if t.runtime == "onnxruntime" and t.precision == "fp32"), None)
        out = []
        for target in self.targets:
            if target.runtime != "onnxruntime":
                continue
            if pytorch is not None:
                out.append(compare(pytorch, target))
            if fp32 is not None and target is not fp32:
                out.append(compare(fp32, target))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "load_after": self.load_after,
                "targets": [t.to_dict() for t in self.targets], "comparisons": self.comparisons()}

    def render(self, markdown: bool = False) -> str:
        return render_text(self.to_dict(), markdown=markdown)


# -- rendering --------------------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _stat(stats: Optional[dict[str, Any]], digits: int = 2) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.{digits}f} ({stats['p90']:.{digits}f})"


def target_rows(report: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    """The per-target tables (median (p90)) from :meth:`BenchReport.to_dict`: batch-1 latency, batches,
    start and size; each as (header, rows)."""
    targets = report["targets"]
    batch_sizes = sorted({int(b) for t in targets for b in t["throughput"]})
    latency = (["target", "encoder ms", "step ms", "loop ms (steps)", "loop / (steps x step)", "step ms after encoder",
                "decode ms after encoder", "decode / (steps x step after encoder)", "preprocess ms", "caption ms"],
               [[t["name"], _stat(t["encoder_ms"]), _stat(t["step_ms"], 3), f"{_stat(t['loop_ms'])} ({t['steps']:g})",
                 _fmt(t["loop_overhead"], 3, "x"), _stat(t["cold_step_ms"], 3), _stat(t["decode_ms"]),
                 _fmt(t["decode_overhead"], 3, "x"), _stat(t["preprocess_ms"]), _stat(t["caption_ms"])]
                for t in targets])
    batches = (["target", *[f"img/s b{b}" for b in batch_sizes], *[f"b{b}/b1" for b in batch_sizes if b != 1],
                *[f"model img/s b{b}" for b in batch_sizes], *[f"encoder ms/img b{b}" for b in batch_sizes]],
               [[t["name"], *[_stat(t["throughput"].get(str(b)), 1) for b in batch_sizes],
                 *[_fmt(t["batch_speedup"].get(str(b)), 2, "x") for b in batch_sizes if b != 1],
                 *[_stat(t.get("model_throughput", {}).get(str(b)), 1) for b in batch_sizes],
                 *[_stat(t["encoder_ms_per_image"].get(str(b))) for b in batch_sizes]] for t in targets])
    start = (["target", "cold start s", "peak RSS MB", "size MB"],
             [[t["name"], _stat((t.get("cold_start") or {}).get("wall")),
               _fmt((t.get("cold_start") or {}).get("peak_rss_mb"), 0),
               _fmt(t["size_bytes"] / 1e6, 1) if t.get("size_bytes") else "-"] for t in targets])
    tables = [latency, batches, start]
    if any(t.get("phone_caption_ms") for t in targets):
        tables.append((["target", "caption ms", "phone photo caption ms", "phone photo / caption",
                        "preprocess ms", "phone photo preprocess ms"],
                       [[t["name"], _stat(t["caption_ms"]), _stat(t.get("phone_caption_ms")),
                         _fmt(t.get("phone_ratio"), 2, "x"), _stat(t["preprocess_ms"]),
                         _stat(t.get("phone_preprocess_ms"))] for t in targets]))
    return tables


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The ratios table from :meth:`BenchReport.to_dict`, as (header, rows)."""
    batch_sizes = sorted({int(b) for c in report["comparisons"] for b in c["ratios"]["throughput"]})
    header = ["target vs baseline", "encoder", "step", "loop", "decode", "caption (b1)",
              *[f"img/s b{b}" for b in batch_sizes], *[f"model img/s b{b}" for b in batch_sizes],
              "cold start", "peak RSS", "size"]
    rows = []
    for c in report["comparisons"]:
        r = c["ratios"]
        rows.append([f"{c['target']} vs {c['baseline']}", *[_fmt(r.get(k), 2, "x") for k in
                                                              ("encoder", "step", "loop", "decode", "caption")],
                     *[_fmt(r["throughput"].get(str(b)), 2, "x") for b in batch_sizes],
                     *[_fmt(r.get("model_throughput", {}).get(str(b)), 2, "x") for b in batch_sizes],
                     *[_fmt(r.get(k), 2, "x") for k in ("cold_start", "peak_rss", "size")]])
    return header, rows


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
               ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]


def render_text(report: dict[str, Any], markdown: bool = False) -> str:
    """The report (:meth:`BenchReport.to_dict`) as text tables (or markdown): figures as median (p90),
    then the ratios, then the targets' notes."""
    machine = report["machine"]
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores; load average {machine.get('load_average')} "
             f"before, {report.get('load_after')} after; figures are median (p90)",
             "versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
             "settings: " + json.dumps(report["settings"], sort_keys=True), ""]
    for header, rows in target_rows(report):
        lines += _table(header, rows, markdown) + [""]
    lines.pop()
    if report["comparisons"]:
        lines += ["", "ratios (> 1: the target is better; times and sizes baseline/target, img/s target/baseline)"]
        lines += _table(*comparison_rows(report), markdown)
    notes = [f"{t['name']}: {n}" for t in report["targets"] for n in t.get("notes", [])]
    if notes:
        lines += [""] + [f"note: {n}" for n in notes]
    return "\n".join(lines)


__all__ = ["BenchReport", "ColdStart", "TargetReport", "compare", "comparison_rows", "render_text", "target_rows"]
