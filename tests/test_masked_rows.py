"""Greedy batches that keep their finished rows (``OnnxInference(mask_finished_rows=True)``).

Such a batch steps at one shape from start to end: no ``select`` through the host when a row
finishes, and the token each step returns goes back to the next step as it is (on a device, it
never leaves it). The captions must be the tokens of the batch that drops its finished rows,
for every decoder kind, with IO binding on (the CUDA path, run here on the CPU with the same code)
and off, and from several threads at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # export_kit trains and exports its tiny models with torch

from capkit.export.checks import synthetic_images  # noqa: E402
from capkit.runtime import Captioner  # noqa: E402
from capkit.runtime.decoding import DecodingOptions, decode  # noqa: E402
from capkit.runtime.onnx_inference import BoundGreedySteps, OnnxInference  # noqa: E402
from test_decoding import IDS, MarkovInference, chain_table, images  # noqa: E402
from test_thread_safety import interleaved  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GREEDY = DecodingOptions(max_length=12)


class Recorder:
    """Passes calls to ``inner`` and records what each greedy step was given."""

    def __init__(self, inner):
        self.inner, self.batches, self.fed_back, self.selects = inner, [], [], 0
        self.mask_finished_rows = inner.mask_finished_rows
        self._last = None

    def encode(self, pixels):
        return self.inner.encode(pixels)

    def step(self, tokens, state):
        return self.inner.step(tokens, state)

    def greedy_step(self, tokens, state):
        self.batches.append(len(tokens))
        self.fed_back.append(tokens is self._last)
        chosen, logprobs, state = self.inner.greedy_step(tokens, state)
        self._last = chosen
        return chosen, logprobs, state

    def select(self, state, rows):
        self.selects += 1
        return self.inner.select(state, rows)


def results(inference, pixels, options=GREEDY, ids=None):
    return [(r.tokens, r.logprob, r.finished) for r in decode(inference, pixels, options, ids)]


def test_the_loop_records_only_live_rows() -> None:
    """Without ONNX Runtime: a Markov chain whose rows end after 3, 1 and no tokens (max length)."""
    first = np.full((3, 8), -5.0)
    first[0, 4], first[1, 6], first[2, 7] = 10.0, 10.0, 10.0
    table = chain_table()
    table[7, :], table[7, 7] = -5.0, 10.0  # 7 -> 7 forever: the third row never ends

    class Greedy:  # the Markov chain's argmax as a greedy_step
        def __init__(self, inner, mask):
            self.inner, self.mask_finished_rows, self.selects = inner, mask, 0

        def encode(self, pixels):
            return self.inner.encode(pixels)

        def greedy_step(self, tokens, state):
            logits, state = self.inner.step(tokens, state)
            return logits.argmax(-1), np.zeros(len(tokens)), state

        def select(self, state, rows):
            self.selects += 1
            return self.inner.select(state, rows)

    a, b = Greedy(MarkovInference(table, first), False), Greedy(MarkovInference(table, first), True)
    options = DecodingOptions(max_length=6)
    out_a, out_b = decode(a, images(0, 1, 2), options, IDS), decode(b, images(0, 1, 2), options, IDS)
    assert [r.tokens for r in out_b] == [(4, 5, 6), (6,), (7,) * 6] == [r.tokens for r in out_a]
    assert [r.finished for r in out_b] == [True, True, False]
    assert a.selects == 2 and b.selects == 0 and b.inner.calls == 6


@pytest.mark.parametrize("io_binding", [False, True], ids=["plain", "io_binding"])
@pytest.mark.parametrize("kind, layers", [("lstm", 1), ("rnn", 2), ("gru", 1)])
def test_masked_batches_give_the_dropping_captions(export_kit, kind: str, layers: int, io_binding: bool) -> None:
    bundle, pixels, vocab = export_kit.bundle(kind, layers), export_kit.images, export_kit.vocab
    dropping = Recorder(OnnxInference(bundle, device="cpu", io_binding=io_binding))
    masking = Recorder(OnnxInference(bundle, device="cpu", io_binding=io_binding, mask_finished_rows=True))
    expected = results(dropping, pixels[:16], ids=vocab)
    lengths = {len(tokens) for tokens, _, finished in expected if finished}
    assert len(lengths) >= 2 and dropping.selects >= 1  # rows finish at different steps: the dropping batch shrinks
    got = results(masking, pixels[:16], ids=vocab)
    assert [(t, f) for t, _, f in got] == [(t, f) for t, _, f in expected]
    # Log-probabilities within 1e-5: a row's sums run at another batch shape (MLAS blocks a GEMM by its rows)
    assert np.allclose([p for _, p, _ in got], [p for _, p, _ in expected], rtol=0, atol=1e-5)
    assert set(masking.batches) == {16} and masking.selects == 0  # one shape, no select
    assert all(masking.fed_back[1:]) and not masking.fed_back[0]  # each step's tokens go back as they are
    assert len(set(dropping.batches)) >= 2


@pytest.mark.parametrize("io_binding", [False, True], ids=["plain", "io_binding"])
def test_masked_batches_from_threads(export_kit, io_binding: bool) -> None:
    """8 threads on one inference, batches of 3: each thread's captions are the sequential ones."""
    inference = OnnxInference(export_kit.bundle("lstm"), device="cpu", threads=1, io_binding=io_binding,
                              mask_finished_rows=True)
    captioner = Captioner.from_inference(inference, export_kit.vocab, export_kit.spec, 12)
    photos = synthetic_images(32, seed=3)
    chunks = [photos[i::8] for i in range(8)]

    def tokens(chunk):
        return [c.tokens for c in captioner.caption_batch(chunk, batch_size=3)]

    alone = [tokens(chunk) for chunk in chunks]
    assert len({t for chunk in alone for t in chunk}) >= 3
    with interleaved(), ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(tokens, chunks)) == alone


def test_bound_steps_on_ortvalues(export_kit) -> None:
    """With IO binding the bound steps take the encoder's OrtValues for their first step without copying
    them (bound for that step, then unbound), return the state as OrtValues and step on from their own
    buffers: every step equals a plain session's."""
    bundle = export_kit.bundle("lstm")
    inference = OnnxInference(bundle, device="cpu", io_binding=True, mask_finished_rows=True)
    names = bundle.manifest.decoder
    session = ort.InferenceSession(str(bundle.decoder_path), providers=["CPUExecutionProvider"])
    outputs = [*names.greedy_outputs, *names.state_outputs]
    encoded = inference.encode(export_kit.images[:4])
    assert all(isinstance(s, ort.OrtValue) for s in encoded)
    kept = [s.numpy().copy() for s in encoded]
    steps = BoundGreedySteps(inference._decoder, names.token_input, list(names.state_inputs), outputs, encoded,
                             ortvalues=True)
    tokens, state = np.full(4, export_kit.vocab.start_id, np.int64), encoded
    ref_tokens, reference = tokens, kept
    for _ in range(5):
        tokens, logprobs, state = steps.run(tokens, state)
        ref_tokens, ref_logprobs, *reference = session.run(
            outputs, {names.token_input: ref_tokens, **dict(zip(names.state_inputs, reference))})
        assert all(isinstance(s, ort.OrtValue) for s in state)
        assert np.array_equal(tokens, ref_tokens) and np.array_equal(logprobs, ref_logprobs)
        assert all(np.array_equal(s.numpy(), r) for s, r in zip(state, reference))
    assert all(np.array_equal(s.numpy(), k) for s, k in zip(encoded, kept))  # the encoder's state is not written


def test_masking_needs_the_greedy_path(export_kit) -> None:
    """Sampling and beam search choose from the logits: they drop finished rows as before, masked or not."""
    bundle, pixels, vocab = export_kit.bundle("gru"), export_kit.images[:8], export_kit.vocab
    plain = OnnxInference(bundle, device="cpu")
    masked = Recorder(OnnxInference(bundle, device="cpu", mask_finished_rows=True))
    for options in (DecodingOptions(max_length=8, temperature=0.8, seed=4), DecodingOptions(max_length=8, beam=3)):
        assert results(masked, pixels, options, vocab) == results(plain, pixels, options, vocab)
    assert masked.batches == []  # no greedy step: the loop never took the masked path


@pytest.mark.parametrize("value", ["no", 1, None, [True]], ids=["string", "int", "none", "list"])
def test_mask_finished_rows_takes_a_bool_only(export_kit, value) -> None:
    """A value that Python would read as true or false by accident is refused in one line, before any session."""
    from capkit.runtime.errors import CapkitError

    with pytest.raises(CapkitError, match=f"^mask_finished_rows must be True or False, got {type(value).__name__}$"):
        OnnxInference(export_kit.bundle("lstm"), device="cpu", mask_finished_rows=value)
