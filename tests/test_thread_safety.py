"""One Captioner shared by several threads gives the sequential captions, in every configuration.

ONNX Runtime sessions run concurrently; what a call mutates (IO bindings, bound host buffers) must
belong to the calling thread (runtime/onnx_inference.py, ``OnnxInference._thread``). The tests run
8 threads over one Captioner per decoder kind, with I/O binding on (the CUDA default, run here on
the CPU through the same code path: only the device name differs) and off, for greedy decoding,
seeded sampling and beam search, and require the exact tokens of the sequential run (on CUDA too,
where ONNX Runtime can use a GPU). A shared binding (the old code) fails them within a few rounds:
wrong tokens, exceptions, or an abort inside ONNX Runtime. Also: thread counts over
``Limits.max_threads`` never reach ONNX Runtime.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest

from capkit.runtime import Captioner
from capkit.runtime.decoding import greedy_from_logits
from capkit.runtime.limits import LimitError, Limits
from capkit.runtime.onnx_inference import OnnxInference
from capkit.runtime.providers import RuntimeUnavailableError, session_options

pytest.importorskip("torch")  # export_kit trains and exports its tiny models with torch

from capkit.export.checks import synthetic_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one thread is far faster on a loaded machine

THREADS = 8
ROUNDS = 4
CONFIGS = [("lstm", 1), ("rnn", 2), ("gru", 1)]
DECODINGS = {
    "greedy": lambda chunk: {},
    "sampling": lambda chunk: {"temperature": 0.7, "seed": 1000 + chunk},  # each call its own seed
    "beam3": lambda chunk: {"beam": 3},
}


@contextmanager
def interleaved() -> Iterator[None]:
    """Threads switch every microsecond: between steps of a decode, not after whole decodes."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """32 uint8 images of varied sizes (the Captioner decodes and preprocesses them in each thread)."""
    return synthetic_images(32, seed=3)


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{k}{n}" for k, n in CONFIGS])
def bundle(request, export_kit):
    kind, layers = request.param
    return export_kit.bundle(kind, layers)


def captions(captioner: Captioner, photos: list[np.ndarray], chunk: int, decoding: str) -> list[tuple[int, ...]]:
    """Chunk ``chunk`` of the photos (every THREADS-th), in batches of 3 (rows finish at different
    steps, so ``select`` runs too), as tokens."""
    results = captioner.caption_batch(photos[chunk::THREADS], batch_size=3, **DECODINGS[decoding](chunk))
    assert all(c.ok for c in results), [c.error for c in results]
    return [c.tokens for c in results]


@pytest.mark.slow
@pytest.mark.parametrize("io_binding", [True, False], ids=["io_binding", "plain"])
def test_threads_give_the_sequential_captions(bundle, photos, io_binding: bool) -> None:
    captioner = Captioner(bundle, device="cpu", threads=1, io_binding=io_binding)
    assert captioner.inference.io_binding is io_binding
    assert_threads_agree(captioner, photos)


@pytest.mark.slow
@pytest.mark.parametrize("io_binding", [None, False], ids=["default_io_binding", "plain"])
def test_threads_on_cuda(export_kit, photos, io_binding) -> None:
    """The same on a GPU, where there is one that ONNX Runtime can use (skipped elsewhere)."""
    try:
        captioner = Captioner(export_kit.bundle("lstm"), device="cuda", io_binding=io_binding)
    except RuntimeUnavailableError as e:
        pytest.skip(str(e))
    assert captioner.inference.io_binding is (io_binding is None)  # I/O binding is the CUDA default
    assert_threads_agree(captioner, photos)


def assert_threads_agree(captioner: Captioner, photos: list[np.ndarray]) -> None:
    for decoding in DECODINGS:
        alone = [captions(captioner, photos, chunk, decoding) for chunk in range(THREADS)]
        assert len({t for chunk in alone for t in chunk}) >= 3  # captions differ: a mix-up would show
        wrong = 0
        with interleaved(), ThreadPoolExecutor(THREADS) as pool:
            for round_ in range(ROUNDS):
                order = [(chunk + round_) % THREADS for chunk in range(THREADS)]  # other neighbours each round
                together = list(pool.map(lambda chunk: captions(captioner, photos, chunk, decoding), order))
                wrong += sum(a != b for chunk, got in zip(order, together) for a, b in zip(alone[chunk], got))
        assert wrong == 0, f"{decoding}: {wrong} of {ROUNDS * len(photos)} captions differ from the sequential ones"


@pytest.mark.parametrize("io_binding", [True, False], ids=["io_binding", "plain"])
def test_interleaved_decodes_in_one_thread(export_kit, io_binding: bool) -> None:
    """A thread's binding is reused by every call of that thread: the states returned before stay
    valid (OrtValues own their tensors), so two decodes stepped in turn give each one's own tokens."""
    inference = OnnxInference(export_kit.bundle("lstm"), device="cpu", threads=1, io_binding=io_binding)
    images = export_kit.images  # (32, 3, 32, 32)
    a, b = images[0:3], images[5:9]  # two batch sizes

    def alone(pixels: np.ndarray, greedy: bool) -> list[np.ndarray]:
        state, tokens, out = inference.encode(pixels), np.ones(len(pixels), np.int64), []
        for _ in range(6):
            if greedy:
                tokens, _, state = inference.greedy_step(tokens, state)
            else:
                logits, state = inference.step(tokens, state)
                tokens = greedy_from_logits(logits)[0]
            out.append(np.array(tokens))
        return out

    for greedy in (True, False):
        expected_a, expected_b = alone(a, greedy), alone(b, greedy)
        states = [inference.encode(a), inference.encode(b)]  # b's encode reuses the binding a's came from
        tokens = [np.ones(len(a), np.int64), np.ones(len(b), np.int64)]
        got: list[list[np.ndarray]] = [[], []]
        for _ in range(6):
            for i in (0, 1):
                if greedy:
                    chosen, _, states[i] = inference.greedy_step(tokens[i], states[i])
                else:
                    logits, states[i] = inference.step(tokens[i], states[i])
                    chosen = greedy_from_logits(logits)[0]
                tokens[i] = np.array(chosen)
                got[i].append(tokens[i])
        assert all(np.array_equal(x, y) for x, y in zip(got[0], expected_a))
        assert all(np.array_equal(x, y) for x, y in zip(got[1], expected_b))
    # an earlier state, kept while later steps rebind the thread's binding, still reads the same
    first = inference.encode(a)
    kept = [np.array(s.numpy() if hasattr(s, "numpy") else s) for s in first]
    for _ in range(3):
        inference.step(np.ones(len(b), np.int64), inference.encode(b))
    assert all(np.array_equal(np.asarray(s.numpy() if hasattr(s, "numpy") else s), k) for s, k in zip(first, kept))


def test_threads_over_the_limit_never_reach_onnx_runtime(export_kit, tmp_path) -> None:
    bundle = export_kit.bundle("lstm")
    started = time.perf_counter()
    for kwargs in ({"threads": 10**6}, {"step_threads": 10**6}, {"threads": np.int64(10**6)}):
        with pytest.raises(LimitError, match="max_threads"):
            OnnxInference(bundle, device="cpu", **kwargs)
    with pytest.raises(LimitError, match="max_threads"):  # checked before the bundle is read
        OnnxInference(tmp_path / "nowhere", device="cpu", threads=10**6)
    with pytest.raises(LimitError, match="max_threads"):
        Captioner(bundle, device="cpu", threads=10**6)
    with pytest.raises(LimitError, match="max_threads"):
        session_options(10**6, "all")
    assert time.perf_counter() - started < 5  # refused, not attempted
    with pytest.raises(LimitError, match="max_threads"):  # the limit is the caller's to set
        OnnxInference(bundle, device="cpu", threads=3, limits=Limits(max_threads=2))
    assert OnnxInference(bundle, device="cpu", threads=2, limits=Limits(max_threads=2)).threads["encoder"] == 2


def test_cli_threads_over_the_limit(tmp_path) -> None:
    from click.testing import CliRunner

    from capkit.cli import main

    result = CliRunner().invoke(main, ["caption", str(tmp_path / "img.png"), "--threads", "1000000", "--device", "cpu",
                                       "--model", str(tmp_path / "nowhere")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threads" in lines[0] and "1000000" in lines[0], result.stderr
    assert result.stdout == ""
