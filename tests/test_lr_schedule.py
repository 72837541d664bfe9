"""The learning-rate schedule: a linear warm-up, then constant or a cosine decay to 0, computed from
the step count alone (so that a resumed run continues it)."""

from __future__ import annotations

import math

import pytest

from capkit.training.train import learning_rate


def test_warm_up_rises_linearly_to_the_peak_then_cosine_decays_to_zero():
    rates = [learning_rate(step, 2e-3, "cosine", total=100, warmup=10) for step in range(101)]
    assert rates[0] == pytest.approx(2e-4) and rates[9] == pytest.approx(2e-3)
    assert all(b > a for a, b in zip(rates[:10], rates[1:10]))
    assert rates[10] == pytest.approx(2e-3)  # the decay starts at the peak
    assert rates[55] == pytest.approx(1e-3)  # halfway through the decay
    assert rates[100] == pytest.approx(0.0, abs=1e-12)
    assert all(b <= a for a, b in zip(rates[10:], rates[11:]))


def test_without_warm_up_the_cosine_is_the_old_one():
    for step in (0, 17, 60, 120, 500):
        old = 0.5 * 1e-3 * (1.0 + math.cos(math.pi * min(step / 120, 1.0)))
        assert learning_rate(step, 1e-3, "cosine", total=120) == pytest.approx(old)


def test_constant_after_warm_up():
    assert [learning_rate(s, 1.0, "constant", total=10, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_a_warm_up_longer_than_the_run_never_divides_by_zero():
    assert learning_rate(5, 1.0, "cosine", total=3, warmup=8) == pytest.approx(6 / 8)
    assert learning_rate(9, 1.0, "cosine", total=3, warmup=8) == pytest.approx(0.5 * (1 + math.cos(math.pi)))
