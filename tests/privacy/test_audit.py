"""The empirical audit: its bound behaves as the paper's, and it catches a DP-SGD without noise or clipping."""

import math

import numpy as np
import pytest
import torch

from dpsearch.privacy.audit import canary_audit, eps_lower_bound, guesses, p_value


def test_chance_level_guessing_gives_no_bound():
    assert eps_lower_bound(1000, 1000, 500, 1e-5) == 0.0
    assert eps_lower_bound(1000, 0, 0, 1e-5) == 0.0


def test_bound_grows_with_correct_guesses_and_is_capped_by_the_number_of_canaries():
    bounds = [eps_lower_bound(1000, 200, v, 1e-5) for v in (120, 150, 180, 200)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    # even perfect guessing of all 1000 canaries cannot certify much more than ln(r)-ish: ~5.8 at 95%
    assert 5.0 < eps_lower_bound(1000, 1000, 1000, 1e-5) < 6.5


def test_p_value_is_a_binomial_tail_plus_the_delta_term():
    eps, r, v = 1.0, 100, 70
    pure = p_value(1000, r, v, eps, 0.0)
    from scipy import stats

    assert math.isclose(pure, stats.binom.sf(v - 1, r, 1 / (1 + math.exp(-eps))), rel_tol=1e-12)
    assert p_value(1000, r, v, eps, 1e-3) > pure  # δ only makes rejection harder
    with pytest.raises(ValueError):
        p_value(10, 5, 6, 1.0, 0.0)


def test_guesses_counts_top_as_in_and_bottom_as_out():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.4])
    included = np.array([True, False, False, False, True, True])
    assert guesses(scores, included, 2) == 2  # 0.9 in (right), 0.1 out (right)
    assert guesses(scores, included, 4) == 3  # + 0.8 in (wrong), 0.2 out (right)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1000, 16, generator=g), torch.randint(0, 10, (1000,), generator=g)


def test_audit_catches_dp_sgd_without_noise_and_without_clipping(data):
    x, y = data
    kw = dict(eps=1.0, delta=1e-5, batch=100, epochs=3, m=200, seed=1)
    correct = canary_audit(x, y, 10, **kw)
    assert not correct.violated and correct.eps_lower < 1.0
    for broken in ("noise", "clipping"):
        r = canary_audit(x, y, 10, broken=broken, **kw)
        assert r.violated, (broken, r.by_guesses)
        assert r.sigma == correct.sigma and r.steps == correct.steps  # same claim, same plan: only the bug differs


def test_audit_rejects_an_unknown_break(data):
    with pytest.raises(ValueError, match="broken"):
        canary_audit(*data, 10, eps=1.0, delta=1e-5, batch=100, epochs=1, m=10, broken="accountant")
