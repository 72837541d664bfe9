"""capkit.serve.batching: jobs decoded together through the runtime's decode loop give each image the caption the
Captioner gives it alone (greedy, seeded sampling, beam search), whatever the mode; step batching lets a job join a
running batch; a failing graph call fails only the job whose rows it was; a cancelled job stops at its next call."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from capkit.runtime.captioner import Captioner
from capkit.serve.batching import BatchEngine, Cancelled

OPTIONS = [{}, {"temperature": 0.8, "seed": 3}, {"temperature": 1.0, "top_k": 5, "seed": 11}, {"beam": 3}]


@pytest.fixture(scope="module")
def captioner(export_kit) -> Captioner:
    return Captioner(export_kit.bundle("lstm").folder, device="cpu", threads=1, io_binding=False)


@pytest.fixture(scope="module")
def pixels(export_kit) -> np.ndarray:
    return export_kit.images  # (32, 3, 32, 32)


def engine(captioner: Captioner, mode: str, **kwargs) -> tuple[BatchEngine, list[tuple[str, int]]]:
    runs: list[tuple[str, int]] = []
    return BatchEngine(captioner, mode=mode, on_batch=lambda kind, rows, seconds: runs.append((kind, rows)),
                       **kwargs), runs


def solo(captioner: Captioner, pixels: np.ndarray, options) -> list:
    return [captioner.caption_pixels(pixels[i:i + 1], [None], options)[0] for i in range(len(pixels))]


@pytest.mark.parametrize("mode", ["step", "request", "none"])
@pytest.mark.parametrize("given", OPTIONS, ids=["greedy", "sampled", "top-k", "beam"])
def test_jobs_together_caption_as_alone(captioner, pixels, mode: str, given: dict) -> None:
    options = captioner.options(**given)
    expected = solo(captioner, pixels, options)
    batcher, runs = engine(captioner, mode, max_batch=64)
    try:
        sizes = [1, 3, 2, 1, 4, 1, 5, 2, 1, 3, 1, 4, 4]  # 32 images in jobs of several sizes, submitted at once
        bounds = np.cumsum([0, *sizes])
        jobs = [batcher.submit(pixels[a:b], [f"{a}-{i}" for i in range(a, b)], options)
                for a, b in zip(bounds[:-1], bounds[1:])]
        got = [caption for job in jobs for caption in job.future.result(timeout=60)]
    finally:
        batcher.close()
    assert [c.tokens for c in got] == [c.tokens for c in expected]
    assert [c.text for c in got] == [c.text for c in expected]
    assert [c.logprob for c in got] == pytest.approx([c.logprob for c in expected], abs=1e-5)
    assert [c.image for c in got] == [f"{a}-{i}" for a, b in zip(bounds[:-1], bounds[1:]) for i in range(a, b)]
    biggest = max(rows for kind, rows in runs if kind != "encode")
    if mode == "none":  # one job at a time: never more rows than the largest job (beams count each)
        assert biggest <= max(sizes) * options.beam
    else:  # jobs decoded together
        assert biggest > max(sizes) * options.beam


def test_step_batching_lets_a_job_join_a_running_batch(captioner, pixels) -> None:
    """A job submitted while another decodes runs its steps with it (one graph call for both), and finishes
    before a long one that started first when its captions are short."""
    options = captioner.options(max_length=10)
    batcher, runs = engine(captioner, "step", max_batch=64)
    started = threading.Event()
    original = batcher.base.greedy_step

    def slow_step(tokens, state):  # a model slow enough to see the batch from outside
        started.set()
        time.sleep(0.01)
        return original(tokens, state)

    batcher.base.greedy_step = slow_step
    finished = []
    try:
        first = batcher.submit(pixels[:8], [None] * 8, options)
        first.future.add_done_callback(lambda future: finished.append(time.perf_counter()))
        assert started.wait(30)
        second = batcher.submit(pixels[8:9], [None], options)
        second.future.result(timeout=60)
        first.future.result(timeout=60)
    finally:
        batcher.base.greedy_step = original
        batcher.close()
    steps = [rows for kind, rows in runs if kind == "greedy_step"]
    assert any(rows > 8 for rows in steps), steps  # the second job's row joined the first job's rows
    assert second.started < finished[0]  # let in while the first was decoding, not after it


def test_a_failing_graph_call_fails_only_its_job(captioner, pixels) -> None:
    """When a merged step fails, each job's call runs again alone: only the job whose rows the graph refuses gets
    the error (the Captioner then reports it as that image's), the others' captions are unchanged."""
    options = captioner.options()
    expected = solo(captioner, pixels[:4], options)
    bad = pixels[2:3].copy()
    bad[:] = 7.0  # a marker the wrapped encoder refuses
    batcher, _ = engine(captioner, "request", max_batch=64, max_wait=0.5, incoming=lambda: 1)
    original = batcher.base.encode

    def picky_encode(images):
        if (images == 7.0).all(axis=(1, 2, 3)).any():
            raise RuntimeError("this input is refused")
        return original(images)

    batcher.base.encode = picky_encode
    try:
        jobs = [batcher.submit(pixels[i:i + 1], [f"p{i}"], options) for i in (0, 1)]
        jobs.append(batcher.submit(bad, ["bad"], options))
        jobs.append(batcher.submit(pixels[3:4], ["p3"], options))
        got = [job.future.result(timeout=60)[0] for job in jobs]
    finally:
        batcher.base.encode = original
        batcher.close()
    assert [c.tokens for i, c in enumerate(got) if i != 2] == [expected[i].tokens for i in (0, 1, 3)]
    assert not got[2].ok and "this input is refused" in got[2].error and got[2].image == "bad"


def test_a_cancelled_job_stops_at_its_next_call(captioner, pixels) -> None:
    batcher, _ = engine(captioner, "step")
    original = batcher.base.greedy_step
    calls = []

    def slow_step(tokens, state):
        calls.append(len(tokens))
        time.sleep(0.05)
        return original(tokens, state)

    batcher.base.greedy_step = slow_step
    try:
        job = batcher.submit(pixels[:2], [None, None], captioner.options(max_length=200))
        while not calls:
            time.sleep(0.01)
        batcher.cancel(job)
        with pytest.raises(Cancelled):
            job.future.result(timeout=30)
        made = len(calls)
        time.sleep(0.2)
        assert len(calls) <= made + 1  # no more steps for it
        after = batcher.submit(pixels[:1], [None], captioner.options())  # the engine goes on
        assert after.future.result(timeout=30)[0].ok
    finally:
        batcher.base.greedy_step = original
        batcher.close()


def test_a_job_between_its_calls_keeps_its_own_state(captioner, pixels) -> None:
    """Two jobs slow between their steps (their threads busy), out of step, so that each runs its steps alone while
    the other holds the state of its last step: one's steps must not write over the other's state (the CPU's
    greedy steps run on bound buffers that the step after next overwrites; the engine hands each job copies)."""
    options = captioner.options()
    expected = solo(captioner, pixels, options)
    first, second = next((i, j) for i in range(32) for j in range(32) if expected[i].tokens != expected[j].tokens
                         and len(expected[i].tokens) > 1 and len(expected[j].tokens) > 1)
    batcher, _ = engine(captioner, "step")
    original = batcher.call
    pauses = {"first": 0.01, "second": 0.025}  # past the scheduler's patience: the other runs alone meanwhile

    def call(kind, *args):
        answer = original(kind, *args)
        time.sleep(pauses[batcher._local.job.labels[0]])
        return answer

    batcher.call = call
    try:
        jobs = [batcher.submit(pixels[i:i + 1], [name], options) for i, name in ((first, "first"), (second, "second"))]
        got = [job.future.result(timeout=60)[0] for job in jobs]
    finally:
        batcher.close()
    assert [c.tokens for c in got] == [expected[first].tokens, expected[second].tokens]


def test_a_job_alone_runs_its_calls_in_its_own_thread(captioner, pixels) -> None:
    """Alone in the engine, a job's graph calls run in its own thread (no hand-over to the scheduler); jobs that
    overlap still meet in the scheduler's batches."""
    threads: list[tuple[str, int]] = []
    batcher = BatchEngine(captioner, mode="step", max_batch=64,
                          on_batch=lambda kind, rows, s: threads.append((threading.current_thread().name, rows)))
    try:
        options = captioner.options()
        alone = batcher.submit(pixels[:2], [None, None], options).future.result(timeout=60)
        assert threads and all(name.startswith("capkit-job") for name, _ in threads)
        threads.clear()
        jobs = [batcher.submit(pixels[i:i + 1], [None], options) for i in range(8)]
        together = [job.future.result(timeout=60)[0] for job in jobs]
    finally:
        batcher.close()
    assert any(name == "capkit-batcher" and rows > 1 for name, rows in threads)
    expected = solo(captioner, pixels[:8], options)
    assert [c.tokens for c in together] == [c.tokens for c in expected]
    assert [c.tokens for c in alone] == [c.tokens for c in captioner.caption_pixels(pixels[:2], [None, None], options)]


def test_request_batching_keeps_each_jobs_own_options(captioner, pixels) -> None:
    """Jobs of several decoding options waiting together: each is decoded with its own (batched only with jobs of
    the same options), and gets what the Captioner gives its images alone with those options."""
    batcher, runs = engine(captioner, "request", max_batch=64, max_wait=0.5, incoming=lambda: 1)
    try:
        chosen = [captioner.options(**OPTIONS[i % len(OPTIONS)]) for i in range(12)]
        jobs = [batcher.submit(pixels[i:i + 1], [f"p{i}"], chosen[i]) for i in range(12)]
        got = [job.future.result(timeout=60)[0] for job in jobs]
    finally:
        batcher.close()
    expected = [solo(captioner, pixels[i:i + 1], chosen[i])[0] for i in range(12)]
    assert [c.tokens for c in got] == [c.tokens for c in expected]
    assert [c.image for c in got] == [f"p{i}" for i in range(12)]
    assert max(rows for kind, rows in runs if kind == "encode") > 1  # jobs of one option set did meet


def test_request_batching_drops_a_job_cancelled_while_it_waits(captioner, pixels) -> None:
    """A job that times out before its batch starts is never decoded (its future cancelled); the rest are."""
    batcher, runs = engine(captioner, "request", max_batch=64, max_wait=2.0, incoming=lambda: 1)
    try:
        options = captioner.options()
        dropped = batcher.submit(pixels[:3], [None] * 3, options)
        batcher.cancel(dropped)
        kept = batcher.submit(pixels[3:4], ["p3"], options)
        assert kept.future.result(timeout=60)[0].tokens == solo(captioner, pixels[3:4], options)[0].tokens
    finally:
        batcher.close()
    assert dropped.future.cancelled()
    assert [rows for kind, rows in runs if kind == "encode"] == [1]  # its three images were never encoded


def test_request_batching_decodes_an_idle_engines_request_in_the_callers_thread(captioner, pixels) -> None:
    """caption_now: with the engine idle, a request is decoded in the calling thread (the same captions as the
    scheduler's, each graph run reported); with a request on its way besides the caller's, or while such a decode
    runs, it declines (None), and jobs submitted meanwhile wait for it, then are batched together."""
    incoming = [1]
    threads: list[tuple[str, int]] = []
    batcher = BatchEngine(captioner, mode="request", max_batch=64, max_wait=0.0, incoming=lambda: incoming[0],
                          on_batch=lambda kind, rows, s: threads.append((threading.current_thread().name, rows)))
    options = captioner.options()
    arrived = []
    original = batcher.base.greedy_step
    decoding, release = threading.Event(), threading.Event()

    def held_step(tokens, state):  # the caller's decode holds at its first step until the test has looked
        decoding.set()
        release.wait(30)
        return original(tokens, state)

    try:
        got = batcher.caption_now(pixels[:2], ["a", "b"], options, arrived=lambda: arrived.append(1))
        assert [c.tokens for c in got] == [c.tokens for c in solo(captioner, pixels[:2], options)]
        assert arrived == [1] and threads and {name for name, _ in threads} == {threading.current_thread().name}
        incoming[0] = 2  # another request is being preprocessed: batch with it instead
        assert batcher.caption_now(pixels[:1], [None], options) is None
        incoming[0] = 1
        batcher.base.greedy_step = held_step
        caller = threading.Thread(target=lambda: arrived.append(batcher.caption_now(pixels[:1], [None], options)))
        caller.start()
        assert decoding.wait(30)
        assert batcher.caption_now(pixels[1:2], [None], options) is None  # busy: not a second decode beside it
        jobs = [batcher.submit(pixels[i:i + 1], [None], options) for i in range(2, 6)]
        time.sleep(0.1)
        assert not any(job.future.done() or job.started for job in jobs)  # waiting for the caller's decode
        threads.clear()
        batcher.base.greedy_step = original
        release.set()
        caller.join(30)
        together = [job.future.result(timeout=60)[0] for job in jobs]
    finally:
        release.set()
        batcher.close()
    assert [c.tokens for c in arrived[1]] == [c.tokens for c in solo(captioner, pixels[:1], options)]
    assert [c.tokens for c in together] == [c.tokens for c in solo(captioner, pixels[2:6], options)]
    assert ("capkit-batcher", 4) in threads  # the four waiting jobs: one batch, after the caller's decode
