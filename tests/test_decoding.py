"""The shared decode loop on a tiny numpy model whose answers are known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capkit.runtime.decoding import (
    BeamSearchDecoder,
    DecodingOptions,
    DecodingOptionsError,
    TokenIds,
    TopK,
    TopP,
    decode,
    log_softmax,
    sample_from_scores,
)

START, END = 1, 2
IDS = TokenIds(START, END)


class MarkovInference:
    """Next-token logits depend on the previous token only: logits = table[token].
    The state is each row's image id (so ``select`` is observable) and every image
    starts from its own first-step logits, ``first[image]``."""

    def __init__(self, table: np.ndarray, first: np.ndarray):
        self.table, self.first = table.astype(np.float32), first.astype(np.float32)
        self.calls = 0

    def encode(self, images):
        return {"image": images[:, 0, 0, 0].astype(np.int64), "started": np.zeros(len(images), bool)}

    def step(self, tokens, state):
        self.calls += 1
        logits = np.where(state["started"][:, None], self.table[tokens], self.first[state["image"]])  # (B, V)
        return logits.astype(np.float32), {"image": state["image"], "started": np.ones_like(state["started"])}

    def select(self, state, rows):
        return {k: v[rows] for k, v in state.items()}


def images(*ids: int) -> np.ndarray:
    x = np.zeros((len(ids), 3, 2, 2), np.float32)
    x[:, 0, 0, 0] = ids
    return x


def chain_table(vocab: int = 8) -> np.ndarray:
    """4 -> 5 -> 6 -> <end>, strongly; every other token -> <end>."""
    table = np.full((vocab, vocab), -5.0)
    table[:, END] = 5.0
    table[4, 5] = table[5, 6] = 10.0
    return table


def test_greedy_follows_the_argmax_chain_and_stops_at_end():
    first = np.full((2, 8), -5.0)
    first[0, 4], first[1, 6] = 10.0, 10.0
    inf = MarkovInference(chain_table(), first)
    out = decode(inf, images(0, 1), DecodingOptions(), IDS)
    assert [r.tokens for r in out] == [(4, 5, 6), (6,)]
    assert all(r.finished for r in out)
    # logprob is the sum of log softmax of the raw logits at the chosen tokens, <end> included
    expected = log_softmax(first[:1])[0, 4] + log_softmax(chain_table()[4:5])[0, 5] \
        + log_softmax(chain_table()[5:6])[0, 6] + log_softmax(chain_table()[6:7])[0, END]
    assert out[0].logprob == pytest.approx(expected, abs=1e-6)
    assert inf.calls == 4  # the loop ends once every row has produced <end>


def test_max_length_cuts_unfinished_captions():
    table = np.full((8, 8), -5.0)
    table[:, 7] = 5.0  # never <end>
    out = decode(MarkovInference(table, table[:1]), images(0), DecodingOptions(max_length=3), IDS)
    assert out[0].tokens == (7, 7, 7) and not out[0].finished


def test_finished_rows_leave_the_batch():
    first = np.full((2, 8), -5.0)
    first[0, END], first[1, 4] = 10.0, 10.0
    seen_batch_sizes = []

    class Recording(MarkovInference):
        def step(self, tokens, state):
            seen_batch_sizes.append(len(tokens))
            return super().step(tokens, state)

    decode(Recording(chain_table(), first), images(0, 1), DecodingOptions(), IDS)
    assert seen_batch_sizes == [2, 1, 1, 1]


def test_sampling_is_a_function_of_image_and_seed():
    rng = np.random.default_rng(0)
    table, first = rng.normal(size=(12, 12)) * 2, rng.normal(size=(3, 12)) * 2
    opts = DecodingOptions(temperature=1.0, seed=7, max_length=10)
    batch = decode(MarkovInference(table, first), images(0, 1, 2), opts, IDS)
    alone = [decode(MarkovInference(table, first), images(i), opts, IDS)[0] for i in range(3)]
    reordered = decode(MarkovInference(table, first), images(2, 0, 1), opts, IDS)
    assert [r.tokens for r in batch] == [r.tokens for r in alone]
    assert [r.tokens for r in reordered] == [batch[2].tokens, batch[0].tokens, batch[1].tokens]
    other = decode(MarkovInference(table, first), images(0, 1, 2), DecodingOptions(temperature=1.0, seed=8, max_length=10),
                   IDS)
    assert [r.tokens for r in other] != [r.tokens for r in batch]


def test_sampler_matches_softmax_of_logits_over_temperature():
    logits = np.array([[0.0, 1.0, 2.0, -1.0]])
    for t in (0.5, 2.0):
        rng = np.random.default_rng(1)
        draws = np.array([sample_from_scores(logits / t, rng.random(1))[0] for _ in range(20000)])
        expected = np.exp(log_softmax(logits / t))[0]
        observed = np.bincount(draws, minlength=4) / len(draws)
        assert np.abs(observed - expected).max() < 0.015


def test_inverse_cdf_boundaries():
    scores = np.log(np.array([[0.25, 0.25, 0.5]]))
    assert sample_from_scores(scores, np.array([0.0]))[0] == 0
    assert sample_from_scores(scores, np.array([0.26]))[0] == 1
    assert sample_from_scores(scores, np.array([0.999999]))[0] == 2
    masked = np.array([[-np.inf, 0.0, -np.inf]])
    assert {int(sample_from_scores(masked, np.array([u]))[0]) for u in (0.0, 0.5, 0.99)} == {1}


def test_top_k_and_top_p_keep_the_right_tokens():
    scores = np.log(np.array([[0.1, 0.4, 0.2, 0.3]]))
    k = scores.copy()
    TopK(2).apply(k)
    assert np.isfinite(k[0]).tolist() == [False, True, False, True]
    p = scores.copy()
    TopP(0.65).apply(p)  # 0.4 + 0.3 = 0.7 >= 0.65: keep tokens 1 and 3
    assert np.isfinite(p[0]).tolist() == [False, True, False, True]
    p = scores.copy()
    TopP(0.35).apply(p)  # the most likely token alone
    assert np.isfinite(p[0]).tolist() == [False, True, False, False]


def test_top_k_one_equals_greedy():
    rng = np.random.default_rng(3)
    table, first = rng.normal(size=(10, 10)) * 3, rng.normal(size=(4, 10)) * 3
    greedy = decode(MarkovInference(table, first), images(0, 1, 2, 3), DecodingOptions(max_length=8), IDS)
    top1 = decode(MarkovInference(table, first), images(0, 1, 2, 3),
                  DecodingOptions(temperature=1.5, top_k=1, seed=0, max_length=8), IDS)
    assert [r.tokens for r in top1] == [r.tokens for r in greedy]


def test_beam_one_equals_greedy():
    rng = np.random.default_rng(5)
    table, first = rng.normal(size=(10, 10)) * 3, rng.normal(size=(4, 10)) * 3
    greedy = decode(MarkovInference(table, first), images(0, 1, 2, 3), DecodingOptions(max_length=8), IDS)
    beam1 = decode(MarkovInference(table, first), images(0, 1, 2, 3), DecodingOptions(max_length=8), IDS, decoder=BeamSearchDecoder(START, END, 1))
    assert [(r.tokens, r.finished) for r in beam1] == [(r.tokens, r.finished) for r in greedy]
    assert [r.logprob for r in beam1] == pytest.approx([r.logprob for r in greedy])


def test_beam_search_finds_the_sequence_greedy_misses():
    # first step: token 4 (p~0.5) leads to a flat, uncertain next step; token 5 (p~0.4) leads to <end> surely.
    table = np.full((8, 8), 0.0)
    table[5, :] = -20.0
    table[5, END] = 20.0
    first = np.full((1, 8), -20.0)
    first[0, 4], first[0, 5] = math.log(0.5), math.log(0.4)
    greedy = decode(MarkovInference(table, first), images(0), DecodingOptions(max_length=2), IDS)[0]
    beam = decode(MarkovInference(table, first), images(0), DecodingOptions(beam=3, max_length=2), IDS)[0]
    assert greedy.tokens[0] == 4
    assert beam.tokens == (5,) and beam.finished
    assert beam.logprob > greedy.logprob


def test_beam_batch_equals_single_images():
    rng = np.random.default_rng(9)
    table, first = rng.normal(size=(10, 10)) * 2, rng.normal(size=(3, 10)) * 2
    opts = DecodingOptions(beam=3, max_length=6)
    batch = decode(MarkovInference(table, first), images(0, 1, 2), opts, IDS)
    alone = [decode(MarkovInference(table, first), images(i), opts, IDS)[0] for i in range(3)]
    assert [(r.tokens, round(r.logprob, 9)) for r in batch] == [(r.tokens, round(r.logprob, 9)) for r in alone]


@pytest.mark.parametrize("options, message", [
    (DecodingOptions(temperature=-1), "temperature"),
    (DecodingOptions(temperature=float("nan")), "temperature"),
    (DecodingOptions(temperature=float("inf")), "temperature"),
    (DecodingOptions(top_p=0.0), "top-p"),
    (DecodingOptions(top_p=1.5), "top-p"),
    (DecodingOptions(top_k=0), "top-k"),
    (DecodingOptions(beam=0), "beam"),
    (DecodingOptions(beam=2, temperature=0.5), "beam"),
    (DecodingOptions(max_length=0), "max-length"),
])
def test_bad_options_are_refused_before_any_work(options, message):
    inf = MarkovInference(chain_table(), np.zeros((1, 8)))
    with pytest.raises(DecodingOptionsError, match=message):
        decode(inf, images(0), options, IDS)
    assert inf.calls == 0


def test_a_decode_failure_fails_its_image_alone() -> None:
    """An Inference that raises for one image (as ONNX Runtime can, e.g. out of memory): the batch is split
    until that image is alone; it gets an error Caption, and every other image its own caption."""
    from capkit.runtime.captioner import Captioner
    from capkit.runtime.preprocess import PreprocessSpec
    from capkit.runtime.vocab import Vocabulary

    class FailsOnSeven(MarkovInference):
        def encode(self, pixels):
            if (pixels[:, 0, 0, 0] == 7).any():
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad\nallocation")
            return super().encode(pixels)

    vocab = Vocabulary.build(["four five six", "x"])
    ids = [vocab.start_id, vocab.end_id]
    assert ids == [START, END]  # chain_table's ids
    table, first = chain_table(len(vocab)), np.full((10, len(vocab)), -5.0)
    first[:, 4] = 5.0
    captioner = Captioner.from_inference(FailsOnSeven(table, first), vocab, PreprocessSpec(resize=2, crop=2), 8)
    pixels = images(0, 1, 7, 2, 3)
    captions = captioner.caption_pixels(pixels, ["a", "b", "c", "d", "e"])
    assert [c.ok for c in captions] == [True, True, False, True, True]
    assert captions[2].error == "c: cannot be captioned: RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation"
    assert {c.text for c in captions if c.ok} == {vocab.decode([4, 5, 6])}
