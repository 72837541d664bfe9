"""The step graph's greedy outputs (``next_token``, ``next_logprob``) and the loop's greedy path.

A greedy step fetches the argmax and its log-probability from the graph instead of the logits;
these tests check the outputs against numpy on the logits the same graph returns, and that the
captions are those of the logits path, for every decoder kind, int8, IO binding and older bundles
without the outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from capkit.export import export_model  # noqa: E402
from capkit.export.quantize import quantize_int8  # noqa: E402
from capkit.models import greedy_choice  # noqa: E402
from capkit.runtime.bundle import load_bundle  # noqa: E402
from capkit.runtime.decoding import (DecodingOptions, chosen_log_softmax, decode, greedy_from_logits,  # noqa: E402
                                     log_softmax)
from capkit.runtime.manifest import MANIFEST_NAME, BundleError  # noqa: E402
from capkit.runtime.onnx_inference import BoundGreedySteps, OnnxInference  # noqa: E402
from capkit.training.torch_inference import TorchInference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one thread is far faster on a loaded machine
GREEDY = DecodingOptions(max_length=10)


class LogitsOnly:
    """Hides ``greedy_step``: the loop then takes the logits path (numpy argmax and log-softmax)."""

    def __init__(self, inner):
        self.inner = inner
        self.steps = 0

    def encode(self, images):
        return self.inner.encode(images)

    def step(self, tokens, state):
        self.steps += 1
        return self.inner.step(tokens, state)

    def select(self, state, rows):
        return self.inner.select(state, rows)


class CountingGreedy(LogitsOnly):
    def __init__(self, inner):
        super().__init__(inner)
        self.greedy_steps = 0

    def greedy_step(self, tokens, state):
        self.greedy_steps += 1
        return self.inner.greedy_step(tokens, state)


def plain_session(path: Path):
    """The graph in a session of its own (CPU, default options): a reference independent of OnnxInference."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(inference, images, options, vocab):
    return decode(inference, images, options, vocab)


def test_graph_outputs_are_the_argmax_and_its_log_softmax(export_kit, kind: str, layers: int) -> None:
    bundle = export_kit.bundle(kind, layers)
    decoder = bundle.manifest.decoder
    assert decoder.greedy_outputs == ("next_token", "next_logprob")
    inference = OnnxInference(bundle, device="cpu")
    session = plain_session(bundle.decoder_path)
    state = inference.encode(export_kit.images)  # 32 images
    tokens = np.arange(len(export_kit.images), dtype=np.int64) % len(export_kit.vocab)
    feed = {decoder.token_input: tokens, **dict(zip(decoder.state_inputs, state))}
    logits, *rest = session.run(decoder.outputs, feed)
    next_token, next_logprob = rest[-2:]
    assert next_token.dtype == np.int64 and next_logprob.dtype == np.float64
    assert np.array_equal(next_token, logits.argmax(-1))
    reference = log_softmax(logits)[np.arange(len(logits)), next_token]  # float64 over the float32 logits
    assert np.max(np.abs(next_logprob - reference)) <= 1e-6
    assert len(set(next_token.tolist())) >= 3, "varied choices, so that the comparison can fail"


def test_greedy_choice_matches_numpy_on_hard_cases() -> None:
    """Ties (the first maximum wins, as numpy's argmax), a very confident row (log-prob ~ -1e-9 keeps
    its precision) and a flat one."""
    logits = np.array([[0.0, 3.0, 3.0, -1.0], [40.0, 0.0, 0.0, 20.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    token, logprob = greedy_choice(torch.from_numpy(logits))
    assert token.tolist() == [1, 0, 0] == logits.argmax(-1).tolist()
    assert np.allclose(logprob.numpy(), log_softmax(logits)[np.arange(3), [1, 0, 0]], rtol=1e-6, atol=1e-12)
    chosen, reference = greedy_from_logits(logits)
    assert chosen.tolist() == [1, 0, 0] and np.allclose(reference, logprob.numpy(), rtol=1e-6, atol=1e-12)
    assert np.array_equal(chosen_log_softmax(logits, chosen), log_softmax(logits)[np.arange(3), chosen])


def test_greedy_captions_unchanged(export_kit, kind: str, layers: int) -> None:
    """The graph's choice gives the captions (and log-probabilities) of the logits path; PyTorch too."""
    bundle, images, vocab = export_kit.bundle(kind, layers), export_kit.images, export_kit.vocab
    inference = OnnxInference(bundle, device="cpu")
    counted = CountingGreedy(inference)
    fast = run(counted, images, GREEDY, vocab)
    assert counted.greedy_steps > 0 and counted.steps == 0  # the loop used the graph's choice
    slow = run(LogitsOnly(inference), images, GREEDY, vocab)
    assert [r.tokens for r in fast] == [r.tokens for r in slow]
    assert [r.finished for r in fast] == [r.finished for r in slow]
    assert [r.logprob for r in fast] == pytest.approx([r.logprob for r in slow], abs=1e-6)
    assert len({r.tokens for r in fast}) >= 3
    torch_greedy = run(TorchInference(export_kit.model(kind, layers)), images, GREEDY, vocab)
    assert [r.tokens for r in torch_greedy] == [r.tokens for r in fast]
    assert [r.logprob for r in torch_greedy] == pytest.approx([r.logprob for r in fast], abs=1e-4)


def test_top_k_one_takes_the_greedy_path(export_kit) -> None:
    inference = CountingGreedy(OnnxInference(export_kit.bundle("lstm"), device="cpu"))
    images, vocab = export_kit.images, export_kit.vocab
    greedy = run(inference, images, GREEDY, vocab)
    sampled = run(inference, images, DecodingOptions(max_length=10, temperature=1.5, top_k=1, seed=3), vocab)
    assert inference.steps == 0 and [r.tokens for r in sampled] == [r.tokens for r in greedy]
    run(inference, images, DecodingOptions(max_length=10, temperature=1.5, top_k=2, seed=3), vocab)
    assert inference.steps > 0  # real sampling needs the logits


def test_io_binding_greedy_step(export_kit) -> None:
    bundle, images, vocab = export_kit.bundle("rnn", 2), export_kit.images, export_kit.vocab
    plain, bound = OnnxInference(bundle, device="cpu"), OnnxInference(bundle, device="cpu", io_binding=True)
    tokens = np.array([1, 5, 9], np.int64)
    a = plain.greedy_step(tokens, plain.encode(images[:3]))
    b = bound.greedy_step(tokens, bound.encode(images[:3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert all(isinstance(s, ort.OrtValue) for s in b[2])  # the state stays in ONNX Runtime
    assert all(np.array_equal(x, y.numpy()) for x, y in zip(a[2], b[2]))
    x, y = run(plain, images, GREEDY, vocab), run(bound, images, GREEDY, vocab)
    assert [r.tokens for r in x] == [r.tokens for r in y] and [r.logprob for r in x] == [r.logprob for r in y]


@pytest.mark.slow  # quantizes a bundle
def test_int8_bundle_keeps_the_greedy_outputs(export_kit, tmp_path: Path) -> None:
    int8 = quantize_int8(export_kit.bundle("lstm"), tmp_path / "int8", export_kit.images)
    assert int8.manifest.decoder.greedy_outputs == ("next_token", "next_logprob")
    inference = OnnxInference(int8, device="cpu")
    state = inference.encode(export_kit.images[:8])
    tokens = np.full(8, export_kit.vocab.start_id, np.int64)
    logits, _ = inference.step(tokens, state)
    chosen, logprobs, _ = inference.greedy_step(tokens, state)
    assert np.array_equal(chosen, logits.argmax(-1))
    assert np.max(np.abs(logprobs - log_softmax(logits)[np.arange(8), chosen])) <= 1e-6


def test_bundle_without_greedy_outputs(export_kit, tmp_path: Path) -> None:
    """An older bundle (plain contract) still decodes, with the same captions, through the logits."""
    model, images, vocab = export_kit.model("gru"), export_kit.images, export_kit.vocab
    old = export_model(model, vocab, export_kit.spec, export_kit.max_length, tmp_path / "old", greedy_outputs=False)
    data = json.loads((old.folder / MANIFEST_NAME).read_text())["graphs"]["decoder_step"]
    assert "next_token_output" not in data and data["outputs"] == ["logits", "h_next", "image_embedding_next"]
    inference = OnnxInference(old, device="cpu")
    assert old.manifest.decoder.greedy_outputs is None
    chosen, logprobs, _ = inference.greedy_step(np.array([1, 1], np.int64), inference.encode(images[:2]))
    assert chosen.dtype == np.int64 and logprobs.shape == (2,)
    new = run(OnnxInference(export_kit.bundle("gru"), device="cpu"), images, GREEDY, vocab)
    assert [r.tokens for r in run(inference, images, GREEDY, vocab)] == [r.tokens for r in new]


def test_manifest_greedy_names(export_kit, tmp_path: Path) -> None:
    source = export_kit.bundle("lstm")
    manifest = json.loads((source.folder / MANIFEST_NAME).read_text())
    graph = manifest["graphs"]["decoder_step"]
    assert graph["outputs"] == ["logits", "h_next", "c_next", "image_embedding_next", "next_token", "next_logprob"]
    assert (graph["next_token_output"], graph["next_logprob_output"]) == ("next_token", "next_logprob")
    folder = tmp_path / "b"
    folder.mkdir()
    for path in source.folder.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    assert load_bundle(folder).manifest == source.manifest
    del graph["next_logprob_output"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="without the other"):
        load_bundle(folder)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_bound_greedy_steps_match_plain_runs(export_kit, kind: str, layers: int) -> None:
    """The CPU's greedy steps on buffers bound once: the same tokens, log-probabilities and states as
    ``session.run`` step after step, while the buffers alternate instead of being allocated."""
    bundle, images = export_kit.bundle(kind, layers), export_kit.images
    inference = OnnxInference(bundle, device="cpu")
    session, names = plain_session(bundle.decoder_path), bundle.manifest.decoder
    outputs = [*names.greedy_outputs, *names.state_outputs]
    tokens = ref_tokens = np.full(5, export_kit.vocab.start_id, np.int64)
    state = reference = inference.encode(images[:5])
    returned = []
    for _ in range(6):
        chosen, logprobs, state = inference.greedy_step(tokens, state)
        ref_chosen, ref_logprobs, *reference = session.run(
            outputs, {names.token_input: ref_tokens, **dict(zip(names.state_inputs, reference))})
        assert np.array_equal(chosen, ref_chosen) and np.array_equal(logprobs, ref_logprobs)
        assert all(np.array_equal(s, r) for s, r in zip(state, reference))
        returned.append((chosen, state))
        tokens, ref_tokens = chosen, ref_chosen
    assert len({id(c) for c, _ in returned}) == 2 and len({id(s) for _, s in returned}) == 2  # two sets, in turns
    assert returned[0][0] is returned[2][0] and returned[1][1] is returned[3][1]
    # A new batch size gets its own buffers; a state that is not a step's own is copied in, not aliased.
    fresh = inference.encode(images[:2])
    kept = [s.copy() for s in fresh]
    chosen, _, state = inference.greedy_step(np.array([1, 1], np.int64), fresh)
    assert chosen.shape == (2,) and all(s is not f for s, f in zip(state, fresh))
    assert all(np.array_equal(f, k) for f, k in zip(fresh, kept))


def test_bound_greedy_steps_per_thread(export_kit) -> None:
    """Threads sharing one OnnxInference each get their own buffers: concurrent greedy decodes give the
    captions of sequential ones."""
    from concurrent.futures import ThreadPoolExecutor

    inference, images, vocab = OnnxInference(export_kit.bundle("gru"), device="cpu"), export_kit.images, export_kit.vocab
    chunks = [images[i::4] for i in range(4)]
    alone = [[r.tokens for r in run(inference, chunk, GREEDY, vocab)] for chunk in chunks]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between steps, not after whole decodes
    try:
        with ThreadPoolExecutor(4) as pool:
            for _ in range(5):
                together = list(pool.map(lambda chunk: [r.tokens for r in run(inference, chunk, GREEDY, vocab)],
                                         chunks))
                assert together == alone
    finally:
        sys.setswitchinterval(interval)
    assert len({t for chunk in alone for t in chunk}) >= 3


def test_bound_greedy_steps_need_the_greedy_outputs(export_kit, tmp_path: Path) -> None:
    """Bound buffers are made for (int64 token, log-probability) outputs: a graph's logits in their place
    are refused with a clear error instead of being written into the wrong buffers."""
    bundle = export_kit.bundle("gru")
    names = bundle.manifest.decoder
    state = OnnxInference(bundle, device="cpu").encode(export_kit.images[:1])
    with pytest.raises(BundleError, match="unexpected types"):
        BoundGreedySteps(plain_session(bundle.decoder_path), names.token_input, list(names.state_inputs),
                         [names.logits_output, names.logits_output, *names.state_outputs], state)
