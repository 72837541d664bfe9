"""Pretrained word vectors in the GloVe / word2vec text format, as the initial word-embedding matrix.

A file is read line by line (``word v1 .. vdim``; a word2vec header ``count dim`` is skipped, ``.gz``
is read compressed) and only the vectors of vocabulary words are kept, so multi-GB files need no
more memory than the vocabulary. Words missing from the file keep a small random vector.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import IO

import numpy as np
import torch

from capkit.runtime.errors import CapkitError
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary

INIT_STD = 0.1  # standard deviation of the rows of words the file does not have


class EmbeddingsError(CapkitError):
    """A word-vectors file that cannot be used; one line naming the file (and line) and the problem."""


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def _is_header(parts: list[str]) -> bool:
    return len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _vector(parts: list[str], dim: int, path: Path, line: int) -> np.ndarray | None:
    """The line's vector; None for a phrase with spaces (GloVe 840B has some: ``at name@domain.com 0.1 ..``)."""
    if len(parts) - 1 > dim and not _is_number(parts[1]):
        return None
    if len(parts) - 1 != dim:
        raise EmbeddingsError(f"{path}:{line}: a vector of {len(parts) - 1} dimensions, expected {dim} "
                              "(the embedding width must match the file)")
    try:
        return np.asarray(parts[1:], dtype=np.float32)  # (dim,)
    except ValueError:
        raise EmbeddingsError(f"{path}:{line}: not a word followed by {dim} numbers") from None


def load_word_vectors(path: str | os.PathLike, vocab: Vocabulary, dim: int,
                      seed: int = 0) -> tuple[torch.Tensor, float, int]:
    """(matrix, coverage, found): a float32 (len(vocab), dim) matrix whose rows of vocabulary words found
    in the file are their vectors, the others ``N(0, INIT_STD)`` (seeded) and the ``<pad>`` row zero;
    coverage is the fraction of non-special vocabulary words found, found their number.

    The first vector line must have ``dim`` numbers (a file of another width fails there); later lines
    are split only when their word is in the vocabulary. An exact match wins over a case-insensitive
    one (word2vec files are cased, the vocabulary is lower-case).
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingsError(f"{path}: no such word-vectors file")
    if dim < 1:
        raise EmbeddingsError(f"{path}: embedding width must be >= 1, got {dim}")
    wanted = set(vocab.words[len(SPECIAL_TOKENS):])
    try:
        with _open(path) as f:
            exact, folded = _read_vectors(f, path, wanted, dim)
    except UnicodeDecodeError:
        raise EmbeddingsError(f"{path}: not a UTF-8 text file (a binary word2vec file? save it in text format)") from None
    except (OSError, EOFError) as e:
        raise EmbeddingsError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None

    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), dim, generator=generator) * INIT_STD  # (V, dim)
    matrix[vocab.pad_id] = 0.0
    found = 0
    for i, word in enumerate(vocab.words):
        vector = exact.get(word) if word in exact else folded.get(word)
        if vector is not None and i >= len(SPECIAL_TOKENS):
            matrix[i] = torch.from_numpy(vector)  # (dim,)
            found += 1
    coverage = found / len(wanted) if wanted else 0.0
    return matrix.float(), coverage, found


def _read_vectors(lines: IO[str], path: Path, wanted: set[str],
                  dim: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(vectors of the ``wanted`` words found as they are, vectors of those found only with other
    capitals, keyed lower-case); the first vector line's width is checked against ``dim``."""
    exact: dict[str, np.ndarray] = {}
    folded: dict[str, np.ndarray] = {}
    checked = False
    for line_no, line in enumerate(lines, start=1):
        word = line.rstrip("\n").partition(" ")[0]
        if not checked:
            parts = line.split()
            if not parts:
                continue
            if line_no == 1 and _is_header(parts):
                if int(parts[1]) != dim:
                    raise EmbeddingsError(f"{path}:1: the header says {parts[1]} dimensions, expected {dim} "
                                          "(the embedding width must match the file)")
                continue
            if _vector(parts, dim, path, line_no) is None:
                continue
            checked = True
        if word in wanted and word not in exact:
            vector = _vector(line.split(), dim, path, line_no)
            if vector is not None:
                exact[word] = vector
        elif word and word not in wanted and word.lower() in wanted and word.lower() not in folded:
            vector = _vector(line.split(), dim, path, line_no)
            if vector is not None:
                folded[word.lower()] = vector
    if not checked:
        raise EmbeddingsError(f"{path}: no word vectors in this file")
    return exact, folded
