"""The shared adaptive heuristic of ADA (StyleGAN2-ADA Sec. 3) and Diffusion-GAN (Eq. 5)."""
from __future__ import annotations

import math

import pytest

from ganstack.training.api import SignController


def _feed(ctl, values, batch=64):
    return [ctl.update({"Loss/signs/real": v}, batch) for v in values]


def test_p_moves_by_the_formula_every_interval_steps():
    ctl = SignController(target=0.6, interval=4, speed_kimg=2.0)
    step = 64 * 4 / 2000
    assert _feed(ctl, [0.9, 0.9, 0.9]) == [False] * 3 and ctl.p == 0.0 and math.isnan(ctl.r)
    assert _feed(ctl, [0.9]) == [True] and ctl.p == pytest.approx(step) and ctl.r == pytest.approx(0.9)
    _feed(ctl, [1.0, 1.0, 0.0, 0.0])  # the interval mean 0.5 is below the target, whatever the last value
    assert ctl.p == pytest.approx(0.0) and ctl.r == pytest.approx(0.5)
    _feed(ctl, [-1.0] * 8)  # clipped at 0
    assert ctl.p == 0.0
    _feed(ctl, [1.0] * 4 * 100)  # and at 1
    assert ctl.p == 1.0


def test_missing_or_nonfinite_statistics_are_skipped_and_fixed_p_stays():
    ctl = SignController(target=0.6, interval=2, speed_kimg=1.0)
    assert ctl.update({}, 64) is False and ctl.update({"Loss/signs/real": float("nan")}, 64) is False
    assert ctl.p == 0.0 and ctl.acc_n == 0 and ctl.steps == 2  # steps count, nothing to average
    fixed = SignController(target=0.6, interval=1, speed_kimg=1.0, adaptive=False, p=0.3)
    assert _feed(fixed, [1.0] * 5) == [False] * 5 and fixed.p == 0.3


def test_state_round_trip_continues_identically():
    a = SignController(target=0.6, interval=4, speed_kimg=1.0)
    _feed(a, [0.9, 0.8, 0.7, 0.9, 0.9, 0.1])  # stop mid-interval: the partial sum must survive
    b = SignController(target=0.6, interval=4, speed_kimg=1.0)
    b.load_state_dict(a.state_dict())
    rest = [0.2, 0.95, 0.9, 0.9, 0.9, 0.9]
    assert _feed(a, rest) == _feed(b, rest) and a.state_dict() == b.state_dict() and a.p > 0

