import math

import pytest

from dpsearch.config import default_delta
from dpsearch.privacy import calibrate_sigma, epsilon_for, pld_epsilon, poisson_plan


@pytest.mark.parametrize("eps,n,batch,epochs", [(1, 60000, 512, 5), (5, 60000, 512, 10), (10, 60000, 2000, 30), (3, 1000, 50, 4)])
def test_calibrated_sigma_meets_target_and_pld_agrees(eps, n, batch, epochs):
    delta = default_delta(n)
    q, steps = poisson_plan(n, batch, epochs)
    sigma = calibrate_sigma(eps, delta, q, steps)
    spent = epsilon_for(sigma, q, steps, delta)
    assert spent <= eps
    assert spent > 0.97 * eps  # calibrated, not just safe: σ is not wastefully large
    pld = pld_epsilon(sigma, q, steps, delta)
    assert abs(pld - spent) / spent < 0.03
    assert epsilon_for(sigma, q, steps, delta, "rdp") >= spent  # RDP is the looser bound


def test_more_noise_means_less_epsilon():
    q, steps = poisson_plan(60000, 512, 10)
    assert epsilon_for(1.0, q, steps, 1e-5) < epsilon_for(0.7, q, steps, 1e-5)


def test_default_delta_is_strictly_below_one_over_n():
    assert default_delta(60000) == 1e-5
    assert default_delta(100000) == 1e-6  # 1/N is itself a power of ten: go one lower
    assert default_delta(1000) == 1e-4
    for n in (7, 99, 12345, 10**6):
        assert default_delta(n) < 1 / n and math.log10(default_delta(n)).is_integer()


def test_poisson_plan_matches_opacus_sampling():
    q, steps = poisson_plan(60000, 512, 3)
    assert steps == 3 * 118 and q == 1 / 118 and q <= 512 / 60000
