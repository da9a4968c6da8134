"""The per-trial ε root finder on curves whose root is known."""

import math
from types import SimpleNamespace

import pytest

from dpsearch.privacy.root_search import largest_within


def _curve(scale, power=1.3, step=0.0):
    """A monotone 'composed ε' for per-trial ε e: scale·e^power, optionally rounded up to a grid (as σ calibration
    to 0.2% makes the real curve a fine staircase). Counts its evaluations."""
    calls = []

    def total(e):
        calls.append(e)
        v = scale * e ** power
        return SimpleNamespace(eps=math.ceil(v / step) * step if step else v, delta=1e-6)
    return total, calls


@pytest.mark.parametrize("scale,step", [(3.0, 0.0), (3.0, 0.002), (8.0, 0.0), (1.2, 0.001)])
def test_the_answer_meets_the_total_and_lies_within_the_tolerance_of_the_root(scale, step):
    eps_total, rel_tol = 5.0, 0.01
    total, calls = _curve(scale, step=step)
    lo, hi = eps_total / 18, eps_total
    e, g = largest_within(total, eps_total, lo, total(lo), hi, rel_tol)
    root = (eps_total / scale) ** (1 / 1.3)
    assert g.eps <= eps_total and e in calls  # an evaluated point, never an interpolated guess
    assert root / (1 + rel_tol) <= e <= root * (1 + 1e-9)
    assert len(calls) <= 6  # lo, hi and a few; geometric bisection from 18× to 1% takes 10 after lo


def test_a_whole_budget_per_trial_that_meets_the_total_is_returned_as_is():
    total, calls = _curve(0.5)
    e, g = largest_within(total, 5.0, 0.3, total(0.3), 5.0, 0.01)
    assert e == 5.0 and g.eps <= 5.0 and len(calls) == 2


def test_an_upper_end_without_a_noise_level_is_bisected_from_instead_of_failing():
    from dpsearch.config import ConfigError

    inner, calls = _curve(3.0)

    def total(e):
        if e >= 5.0:
            raise ConfigError("no σ for so large a per-trial ε")
        return inner(e)
    e, g = largest_within(total, 5.0, 5 / 18, total(5 / 18), 5.0, 0.01)
    root = (5.0 / 3.0) ** (1 / 1.3)
    assert g.eps <= 5.0 and root / 1.01 <= e <= root * (1 + 1e-9)
