"""Pretrained word vectors: GloVe and word2vec text files, coverage, and the errors of a wrong file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from capkit.runtime.errors import CapkitError  # noqa: E402
from capkit.runtime.vocab import SPECIAL_TOKENS, Vocabulary  # noqa: E402
from capkit.training.embeddings import EmbeddingsError, load_word_vectors  # noqa: E402

DIM = 4
VOCAB = Vocabulary.build(["a red circle", "a blue square", "a red star on gray"])  # 7 words


def vectors_for(words: list[str], dim: int = DIM, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {w: rng.normal(size=dim).astype(np.float32) for w in words}


def write_vectors(path: Path, vectors: dict[str, np.ndarray], header: bool = False) -> Path:
    lines = [f"{len(vectors)} {len(next(iter(vectors.values())))}"] if header else []
    lines += [w + " " + " ".join(f"{x:.6f}" for x in v) for w, v in vectors.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("header", [False, True], ids=["glove", "word2vec-header"])
def test_rows_of_found_words_are_the_file_vectors(tmp_path, header):
    file_vectors = vectors_for(["the", "red", "circle", "blue", "zebra", "square"])  # 4 of 7 vocab words
    path = write_vectors(tmp_path / "vectors.txt", file_vectors, header=header)
    matrix, coverage, found = load_word_vectors(path, VOCAB, DIM)
    assert matrix.shape == (len(VOCAB), DIM) and matrix.dtype == torch.float32
    assert found == 4 and coverage == pytest.approx(4 / (len(VOCAB) - len(SPECIAL_TOKENS)))
    for word in ("red", "circle", "blue", "square"):
        np.testing.assert_allclose(matrix[VOCAB.id(word)].numpy(), file_vectors[word], atol=1e-6)
    assert torch.all(matrix[VOCAB.pad_id] == 0)
    missing = [VOCAB.id(w) for w in ("a", "star", "on", "gray")]
    assert torch.all(matrix[missing].abs().sum(dim=1) > 0)  # random, not zero
    assert matrix[missing].std() < 0.5  # small random init


def test_missing_rows_are_seeded(tmp_path):
    path = write_vectors(tmp_path / "v.txt", vectors_for(["red"]))
    first, _, _ = load_word_vectors(path, VOCAB, DIM)
    second, _, _ = load_word_vectors(path, VOCAB, DIM)
    assert torch.equal(first, second)


def test_exact_case_wins_and_other_case_is_a_fallback(tmp_path):
    upper = vectors_for(["Red", "Circle"], seed=2)
    lower = vectors_for(["red"], seed=3)
    path = write_vectors(tmp_path / "v.txt", {**upper, **lower})  # "Red" comes before "red"
    matrix, coverage, found = load_word_vectors(path, VOCAB, DIM)
    assert found == 2
    np.testing.assert_allclose(matrix[VOCAB.id("red")].numpy(), lower["red"], atol=1e-6)
    np.testing.assert_allclose(matrix[VOCAB.id("circle")].numpy(), upper["Circle"], atol=1e-6)


def test_gzip_file_and_phrase_lines_are_read(tmp_path):
    vectors = vectors_for(["red", "blue"])
    text = "at name@domain.com " + " ".join(["0.5"] * DIM) + "\n"  # GloVe 840B has phrases with spaces
    text += "".join(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in vectors.items())
    path = tmp_path / "v.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    matrix, _, found = load_word_vectors(path, VOCAB, DIM)
    assert found == 2
    np.testing.assert_allclose(matrix[VOCAB.id("blue")].numpy(), vectors["blue"], atol=1e-6)


def test_no_vocabulary_word_in_file_gives_zero_coverage(tmp_path):
    path = write_vectors(tmp_path / "v.txt", vectors_for(["zebra", "giraffe"]))
    matrix, coverage, found = load_word_vectors(path, VOCAB, DIM)
    assert (coverage, found) == (0.0, 0) and matrix.shape == (len(VOCAB), DIM)


def test_wrong_dimension_names_file_line_and_widths(tmp_path):
    path = write_vectors(tmp_path / "glove.6B.50d.txt", vectors_for(["red", "blue"], dim=6))
    with pytest.raises(EmbeddingsError, match=r"glove\.6B\.50d\.txt:1: .*6 dimensions, expected 4"):
        load_word_vectors(path, VOCAB, DIM)


def test_wrong_header_dimension(tmp_path):
    path = write_vectors(tmp_path / "w2v.txt", vectors_for(["red"], dim=6), header=True)
    with pytest.raises(EmbeddingsError, match=r"w2v\.txt:1: .*6 dimensions, expected 4"):
        load_word_vectors(path, VOCAB, DIM)


def test_short_vector_of_a_vocabulary_word_later_in_the_file(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("zebra 1 2 3 4\nred 1 2 3\n")
    with pytest.raises(EmbeddingsError, match=r"v\.txt:2: a vector of 3 dimensions, expected 4"):
        load_word_vectors(path, VOCAB, DIM)


def test_bad_numbers_and_bad_files(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("red 1 2 x 4\n")
    with pytest.raises(EmbeddingsError, match=r"bad\.txt:1: not a word followed by 4 numbers"):
        load_word_vectors(bad, VOCAB, DIM)
    with pytest.raises(EmbeddingsError, match="no such word-vectors file"):
        load_word_vectors(tmp_path / "absent.txt", VOCAB, DIM)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(EmbeddingsError, match="no word vectors"):
        load_word_vectors(empty, VOCAB, DIM)
    binary = tmp_path / "vectors.bin"
    binary.write_bytes(b"2 4\nred \xff\xfe\x00\x01")
    with pytest.raises(EmbeddingsError, match="not a UTF-8 text file"):
        load_word_vectors(binary, VOCAB, DIM)
    assert issubclass(EmbeddingsError, CapkitError)
