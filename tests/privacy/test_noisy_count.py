"""The counting objective: σ calibrated so that the counts compose to (ε, δ), checked against the closed form
of the Gaussian mechanism, and noise that is fresh and of the right size."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from dpsearch.config import ConfigError
from dpsearch.data import ImageSet
from dpsearch.privacy.noisy_count import NoisyCount, count_epsilon, count_sigma


@pytest.fixture(autouse=True)
def _search_not_memo():
    """These tests are about the calibration itself: no σ memoised by an earlier test in this process stands in."""
    count_sigma.cache_clear()


def _gaussian_delta(eps: float, mu: float) -> float:
    """Balle & Wang (2018), Theorem 8: the exact δ(ε) of a Gaussian mechanism with sensitivity/σ = μ."""
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


@pytest.mark.parametrize("queries,eps,delta", [(1, 1.0, 1e-5), (12, 1.0, 1.67e-6), (12, 10.0, 1.67e-6), (5, 0.5, 1e-6)])
def test_sigma_meets_the_target_by_the_closed_form(queries, eps, delta):
    sigma = count_sigma(queries, eps, delta)
    mu = math.sqrt(queries) / sigma  # k Gaussian counts of sensitivity 1 are one Gaussian with sensitivity √k
    assert _gaussian_delta(eps, mu) <= delta * 1.01
    assert _gaussian_delta(eps, math.sqrt(queries) / (0.97 * sigma)) > delta  # and not much larger than needed
    assert count_epsilon(sigma, queries, delta) == pytest.approx(eps, rel=0.02)


def test_more_queries_cost_more():
    sigma = count_sigma(4, 1.0, 1e-6)
    assert count_epsilon(sigma, 8, 1e-6) > 1.2 and count_epsilon(sigma, 2, 1e-6) < 0.8


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="at least one query"):
        count_sigma(0, 1.0, 1e-5)
    with pytest.raises(ConfigError, match="ε > 0"):
        count_sigma(3, 0.0, 1e-5)


def test_the_released_accuracy_is_the_true_one_plus_fresh_gaussian_noise():
    n = 400
    holdout = ImageSet(torch.zeros(n, 1, 28, 28, dtype=torch.uint8), torch.zeros(n, dtype=torch.long), 10, "holdout")
    count = NoisyCount(holdout, sigma=8.0, n_public=n)
    draws = np.array([count.accuracy(100) for _ in range(400)])  # 100 of 400 right
    assert len(set(draws)) > 25  # fresh noise every query (whole counts: ≈ 40 distinct values at σ = 8)
    assert abs(draws.mean() - 0.25) < 4 * 8.0 / n / math.sqrt(len(draws))  # unbiased (rounding is symmetric)
    assert draws.std() * n == pytest.approx(8.0, rel=0.15)
    assert NoisyCount(holdout, sigma=0.0, n_public=n).accuracy(100) == 0.25


def test_a_released_count_is_a_whole_number_over_the_public_size():
    """No low-order float bits of the Gaussian sample leave (Mironov's attack), and the exact slice size is not
    the denominator: a slice planned at 500 records divides by 500 whatever its exact count."""
    holdout = ImageSet(torch.zeros(488, 1, 28, 28, dtype=torch.uint8), torch.zeros(488, dtype=torch.long), 10, "h")
    count = NoisyCount(holdout, sigma=3.0, n_public=500)
    for _ in range(50):
        released = count.accuracy(200)
        assert (released * 500) == pytest.approx(round(released * 500), abs=1e-9)
    assert NoisyCount(holdout, sigma=0.0, n_public=500).accuracy(200) == 0.4


def test_the_objective_counts_the_classifiers_correct_predictions_on_the_held_out_records():
    """evaluate() hands the count of right answers of the classifier it trained to the mechanism."""
    from dpsearch.config import EvaluateConfig
    from dpsearch.data import printed_digits
    from dpsearch.evaluate import accuracy, evaluate, train_classifier

    synthetic, held = printed_digits(600, seed=1, progress=False), printed_digits(300, seed=2, progress=False)
    cfg = EvaluateConfig(classifier_epochs=1)
    exact = evaluate(synthetic, None, cfg, progress=False, count=NoisyCount(held, sigma=0.0, n_public=len(held)))["objective"]
    net, _ = train_classifier(synthetic, cfg, progress=False)  # same seed: the same classifier
    assert exact == pytest.approx(accuracy(net, held)) and 0 < exact < 1
