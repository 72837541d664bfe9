"""Pure functions over logits, float64 numpy: log-softmax, the greedy choice, the top-k / top-p filters and
inverse-CDF sampling. The decoding loop (:mod:`capkit.runtime.decoding`) composes them; the JavaScript
runtime ports them (clients/js/src/decoding.js) and is checked against them token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from capkit.runtime.errors import CapkitError


class LogitsError(CapkitError):
    """A model whose logits (or the log-probabilities it computes itself) are not numbers a token can be
    chosen from: NaN, +inf, or -inf for every word. No caption exists; the message says so in one line."""


NOT_FINITE = "the model's logits are not finite numbers (NaN or infinity): a broken model or an input it cannot take"


def row_max(x: np.ndarray) -> np.ndarray:
    """Each row's largest logit, float (B, 1); LogitsError when one is not finite. The maximum is NaN when any
    logit of its row is, +inf when one is, and -inf when all are: one check of B numbers covers the row."""
    best = x.max(axis=-1, keepdims=True)  # (B, 1)
    if not np.isfinite(best).all():
        raise LogitsError(NOT_FINITE)
    return best


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)  # (B, V)
    x = x - row_max(x)  # (B, V)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))  # (B, V)


def scaled_scores(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``(logits - max) / T``, float64 (B, V): what sampling draws from (``softmax`` of it). Subtracting the
    maximum first keeps every score <= 0, so a tiny T cannot give inf - inf (NaN). A score may still overflow
    to -inf (T = 1e-320): that is its exact limit, a word of probability 0, so numpy's overflow warning is
    silenced for this one division; the best words keep score 0 whatever T is."""
    x = logits.astype(np.float64)  # (B, V)
    np.subtract(x, row_max(x), out=x)
    with np.errstate(over="ignore"):
        return np.divide(x, temperature, out=x)  # (B, V)


def chosen_log_softmax(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``log_softmax(logits)[rows, chosen]`` (float64 (B,)) without building the (B, V) result."""
    x = logits.astype(np.float64)  # (B, V)
    best = row_max(x)  # (B, 1)
    picked = x[np.arange(len(x)), chosen] - best[:, 0]  # (B,)
    np.subtract(x, best, out=x)
    return picked - np.log(np.exp(x, out=x).sum(axis=-1))  # (B,)


def greedy_from_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logits (B, V) -> argmax int64 (B,) (the first maximum) and its log-softmax float64 (B,)."""
    chosen = logits.argmax(axis=-1).astype(np.int64)  # (B,)
    return chosen, chosen_log_softmax(logits, chosen)


class LogitFilter(Protocol):
    def apply(self, scores: np.ndarray) -> None:
        """Sets the scores (float64 (B, V), logits / T) of excluded tokens to -inf, in place."""


@dataclass(frozen=True)
class TopK:
    k: int

    def apply(self, scores: np.ndarray) -> None:
        if self.k >= scores.shape[-1]:
            return
        kth = np.partition(scores, -self.k, axis=-1)[:, -self.k, None]  # (B, 1)
        scores[scores < kth] = -np.inf


@dataclass(frozen=True)
class TopP:
    p: float

    def apply(self, scores: np.ndarray) -> None:
        if self.p >= 1.0:
            return
        order = np.argsort(-scores, axis=-1, kind="stable")  # (B, V)
        ranked = np.take_along_axis(scores, order, axis=-1)  # (B, V)
        probs = np.exp(ranked - ranked[:, :1])  # (B, V)
        cumulative = np.cumsum(probs, axis=-1) / probs.sum(axis=-1, keepdims=True)  # (B, V)
        drop = (cumulative - probs / probs.sum(axis=-1, keepdims=True)) >= self.p  # mass before this token
        np.put_along_axis(scores, order, np.where(drop, -np.inf, ranked), axis=-1)


def sample_from_scores(scores: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse CDF: scores float64 (B, V) and one uniform in [0, 1) per row -> int64 (B,) tokens."""
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))  # (B, V)
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    targets = uniforms * cdf[:, -1]  # (B,)
    tokens = (cdf <= targets[:, None]).sum(axis=-1)  # (B,) first index whose cdf exceeds the target
    return np.minimum(tokens, scores.shape[-1] - 1).astype(np.int64)


__all__ = ["LogitFilter", "LogitsError", "TopK", "TopP", "chosen_log_softmax", "greedy_from_logits", "log_softmax",
           "row_max", "sample_from_scores", "scaled_scores"]
