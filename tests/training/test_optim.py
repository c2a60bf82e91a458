"""Learning-rate schedules step per batch with the documented shapes."""

from __future__ import annotations

import math

import pytest

from seqexp.errors import ConfigError
from seqexp.training.optim import lr_lambda


def test_linear_warmup_then_decay_to_zero():
    f = lr_lambda("linear", total_steps=100, warmup_ratio=0.1)
    assert f(0) == pytest.approx(1 / 11)
    assert f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == 0.0


def test_cosine_and_constant():
    cos = lr_lambda("cosine", total_steps=100, warmup_ratio=0.0)
    assert cos(0) == pytest.approx(1.0)
    assert cos(50) == pytest.approx(0.5)
    assert cos(100) == pytest.approx(0.0, abs=1e-12)
    assert cos(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    const = lr_lambda("constant", total_steps=100, warmup_ratio=0.0)
    assert {const(s) for s in range(100)} == {1.0}


def test_unknown_schedule_names_the_key():
    with pytest.raises(ConfigError, match="scheduler.name"):
        lr_lambda("step", 10, 0.0)
