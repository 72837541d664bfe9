"""BLEU-1..4 and CIDEr with pycocoevalcap's scorers, greedy and over a list of temperatures.

Works with any :class:`capkit.runtime.captioner.Captioner`: an exported bundle (ONNX Runtime) or a
checkpoint's PyTorch model (``capkit.training.torch_inference.checkpoint_captioner``). Captions and
references are tokenised with the vocabulary's tokenizer (lower-case words, no punctuation),
which stands in for the Java PTB tokenizer of the COCO toolkit.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from capkit.runtime.captioner import DEFAULT_BATCH_SIZE, Captioner
from capkit.runtime.decoding import decode
from capkit.runtime.errors import CapkitError, Status
from capkit.runtime.image_files import ImageError
from capkit.runtime.vocab import tokenize
from capkit.training import log_to_stderr
from capkit.training.datasets import CaptionedImage
from capkit.training.synthetic.facts import FactCheck

DEFAULT_TEMPERATURES = (0.0, 0.1, 0.2, 0.7, 1.0, 1.5, 2.0)  # the seed report's Table 2


class EvaluationError(CapkitError):
    """Nothing to evaluate (no readable image, an empty split); one line."""


@dataclass(frozen=True)
class EvalResult:
    temperature: float
    bleu1: float
    bleu2: float
    bleu3: float
    bleu4: float
    cider: float
    images: int
    facts: Optional[dict[str, float]] = None  # fact accuracy (synthetic data: FactCheck.score); None: no scenes

    def to_dict(self) -> dict:
        """The JSON form; ``facts`` is absent (not zero) for data that records no scenes."""
        data = asdict(self)
        if self.facts is None:
            del data["facts"]
        return data


class EvalReport(list):
    """:func:`evaluate`'s answer: the list of :class:`EvalResult` (one per temperature), as before, and
    ``ceiling``: the references' own scores (:func:`reference_ceiling`; None with one reference an image)."""

    def __init__(self, results: Sequence[EvalResult] = (), ceiling: Optional[dict[str, float]] = None):
        super().__init__(results)
        self.ceiling = ceiling


def score_captions(references: dict[str, Sequence[str]], hypotheses: dict[str, str]) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr of one hypothesis per image against its references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {k: [" ".join(tokenize(r)) for r in refs] for k, refs in references.items()}
    res = {k: [" ".join(tokenize(hypotheses[k])) or "<empty>"] for k in references}
    with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    return {"bleu1": bleu[0], "bleu2": bleu[1], "bleu3": bleu[2], "bleu4": bleu[3], "cider": float(cider)}


def reference_ceiling(records: Sequence[CaptionedImage]) -> Optional[dict[str, float]]:
    """The references' own BLEU-1..4 and CIDEr, leave one out: for each k below the smallest number of
    references an image has, every image's k-th reference is scored against its other references (the
    same scorers as :func:`score_captions`); the scores are averaged over k. What a captioner that
    writes like one more annotator would get: a weak model scores well under it, a hard or noisy
    dataset has a low one. None when an image has fewer than 2 references (or there is no image)."""
    records = list(records)
    min_refs = min((len(r.captions) for r in records), default=0)
    if min_refs < 2:
        return None
    totals: dict[str, float] = {}
    for k in range(min_refs):
        hypotheses = {r.image_id: r.captions[k] for r in records}
        references = {r.image_id: [c for j, c in enumerate(r.captions) if j != k] for r in records}
        for name, value in score_captions(references, hypotheses).items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: value / min_refs for name, value in totals.items()}


def generate_captions(captioner: Captioner, records: Sequence[CaptionedImage], temperatures: Sequence[Optional[float]],
                      *, progress: bool = True, status: Status = log_to_stderr,
                      batch_size: int = DEFAULT_BATCH_SIZE, **options: Any) -> dict[Optional[float], dict[str, str]]:
    """{temperature: {image_id: caption}}; each batch of images is preprocessed once for all temperatures.
    ``options``: the other decoding options (``captioner.options``' keywords; None: the captioner's
    defaults); a temperature of None is the captioner's default."""
    settings = {t: captioner.options(temperature=t, **options) for t in temperatures}  # all checked before any work
    vocab = captioner.vocab
    captions: dict[Optional[float], dict[str, str]] = {t: {} for t in temperatures}
    for start in tqdm(range(0, len(records), batch_size), desc="captioning", disable=not progress, leave=False):
        rows, ids = [], []
        for record in records[start:start + batch_size]:
            try:
                rows.append(captioner.preprocess(record.image))  # (3, H, W)
                ids.append(record.image_id)
            except ImageError as e:
                status(f"skipping unreadable image: {e}")
        if not rows:
            continue
        pixels = np.stack(rows)  # (B, 3, H, W)
        for t, opts in settings.items():
            results = decode(captioner.inference, pixels, opts, vocab,
                             limits=captioner.limits)
            for image_id, result in zip(ids, results):
                captions[t][image_id] = vocab.decode(result.tokens)
    return captions


def evaluate(captioner: Captioner, records: Sequence[CaptionedImage],
             temperatures: Sequence[Optional[float]] = DEFAULT_TEMPERATURES, *, limit: Optional[int] = None,
             progress: bool = True, status: Status = log_to_stderr, batch_size: int = DEFAULT_BATCH_SIZE,
             ceiling: bool = True, facts: Optional[FactCheck] = None, **options: Any) -> EvalReport:
    """BLEU-1..4 and CIDEr of ``captioner``'s captions of ``records``, one result per temperature (an
    :class:`EvalReport`, a list), with the references' own ceiling on the images scored (``ceiling``:
    whether to compute it), and fact accuracy against ``facts``' scenes (synthetic data:
    ``capkit.training.synthetic.fact_check``). ``options``: the other decoding options (top_k, top_p, beam,
    max_length, seed), as ``captioner.options``."""
    records = list(records)[:limit] if limit else list(records)
    captions = generate_captions(captioner, records, temperatures, progress=progress, status=status,
                                 batch_size=batch_size, **options)
    results = EvalReport()
    for t in temperatures:
        references = {r.image_id: r.captions for r in records if r.image_id in captions[t]}
        if not references:
            raise EvaluationError("no readable image to evaluate")
        scores = score_captions(references, captions[t])
        results.append(EvalResult(temperature=captioner.options(temperature=t, **options).temperature,
                                  images=len(references), facts=facts.score(captions[t]) if facts else None,
                                  **scores))
    if ceiling:
        scored = [r for r in records if r.image_id in captions[temperatures[0]]]
        results.ceiling = reference_ceiling(scored)
    return results


CEILING_LABEL = "references (ceiling)"
FACTS_LEGEND = ("facts: the share of captions stating their scene exactly right; objects: every object with every "
                "attribute; then each attribute and each scene-wide fact (right, or not stated)")


def format_table(results: Sequence[EvalResult], ceiling: Optional[dict[str, float]] = None) -> str:
    """The seed report's Table 2 layout: one row per temperature, then the references' ceiling
    (``ceiling``, default: ``results.ceiling`` of an :class:`EvalReport`) when there is one."""
    if ceiling is None:
        ceiling = getattr(results, "ceiling", None)
    width = max(11, len(CEILING_LABEL)) if ceiling else 11
    fact_keys = list(results[0].facts) if results and results[0].facts else []
    header = f"{'Temperature':>{width}}  {'BLEU-1':>6}  {'BLEU-2':>6}  {'BLEU-3':>6}  {'BLEU-4':>6}  {'CIDEr':>6}"
    lines = [header + "".join(f"  {_fact_label(k):>10}" for k in fact_keys)]
    rows = [("0 (greedy)" if r.temperature == 0 else f"{r.temperature:g}", asdict(r)) for r in results]
    if ceiling:
        rows.append((CEILING_LABEL, ceiling))
    for label, s in rows:
        facts = "".join(f"  {s['facts'][k]:10.1%}" for k in fact_keys) if s.get("facts") else ""
        lines.append(f"{label:>{width}}  {s['bleu1']:6.3f}  {s['bleu2']:6.3f}  {s['bleu3']:6.3f}  {s['bleu4']:6.3f}  "
                     f"{s['cider']:6.3f}" + facts)
    return "\n".join(lines)


def _fact_label(key: str) -> str:
    return "facts" if key == "exact" else key
