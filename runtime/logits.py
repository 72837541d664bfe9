"""Pure functions over logits, float64 numpy: log-softmax, the greedy choice, the top-k / top-p filters and
inverse-CDF sampling. The decoding loop (:mod:`capkit.runtime.decoding`) composes them; the JavaScript
runtime ports them (clients/js/src/decoding.js) and is checked against them token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)  # (B, V)
    x = x - x.max(axis=-1, keepdims=True)  # (B, V)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))  # (B, V)


def chosen_log_softmax(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``log_softmax(logits)[rows, chosen]`` (float64 (B,)) without building the (B, V) result."""
    x = logits.astype(np.float64)  # (B, V)
    best = x.max(axis=-1, keepdims=True)  # (B, 1)
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


__all__ = ["LogitFilter", "TopK", "TopP", "chosen_log_softmax", "greedy_from_logits", "log_softmax",
           "sample_from_scores"]
