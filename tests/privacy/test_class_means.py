"""The class-mean warm-up's DP release: its sensitivity, its noise, and its accounting composed with DP-SGD."""

import math

import pytest
import torch

from dpsearch.config import ConfigError, FinetuneConfig, default_delta
from dpsearch.data import ImageSet
from dpsearch.privacy.accounting import (calibrate_sigma, check_accountants, epsilon_for, gaussian_sigma, pld_epsilon,
                                         poisson_plan, warmup_sigma)
from dpsearch.privacy.class_means import class_sums_and_counts, noisy_class_means, sensitivity
from dpsearch.privacy.dpsgd import plan_privacy
from dpsearch.privacy.randomness import MechanismRandomness
from dpsearch.privacy.report import check_recorded


def _set(n=40, k=4, size=6, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % k, k, "t")


def test_removing_any_record_moves_the_query_by_at_most_the_sensitivity_and_a_white_image_reaches_it():
    data = _set()
    white = ImageSet(torch.full((1, 1, 6, 6), 255, dtype=torch.uint8), torch.tensor([2]), 4, "w")
    full = class_sums_and_counts(data)
    d = 36
    for i in range(len(data)):
        keep = torch.tensor([j for j in range(len(data)) if j != i])
        moved = (full - class_sums_and_counts(data.take(keep, "t"))).norm()
        assert moved <= sensitivity(d) + 1e-4
    both = ImageSet(torch.cat([data.images, white.images]), torch.cat([data.labels, white.labels]), 4, "t")
    assert (class_sums_and_counts(both) - full).norm() == pytest.approx(sensitivity(d), rel=1e-6)


def test_without_noise_the_means_are_the_exact_class_means():
    data = _set()
    means = noisy_class_means(data, 0.0, MechanismRandomness())
    for c in range(4):
        exact = data.images[data.labels == c].float().div(255).mean(0)
        torch.testing.assert_close(means[c], exact, rtol=0, atol=1e-6)


def test_the_noise_on_the_released_vector_has_std_sigma_times_sensitivity():
    """Black images and one record per class: the released sums are pure noise, std σ·Δ (the counts are 1 + noise)."""
    k, size, sigma = 10, 64, 0.01
    data = ImageSet(torch.zeros(k, 1, size, size, dtype=torch.uint8), torch.arange(k), k, "black")
    means = noisy_class_means(data, sigma, MechanismRandomness())  # counts ≈ 1 ± σΔ/h: means ≈ the noise itself
    noise = means.flatten()
    # clamping to [0, 1] keeps the positive half: E|z| of a half-normal is std·√(2/π)
    expected = sigma * sensitivity(size * size)
    assert noise.mean().item() == pytest.approx(expected * math.sqrt(2 / math.pi) / 2, rel=0.1)
    assert (noise > 0).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_two_releases_of_the_same_data_differ():
    data = _set()
    a, b = (noisy_class_means(data, 1.0, MechanismRandomness()) for _ in range(2))
    assert not torch.equal(a, b)


def test_warmup_sigma_is_the_gaussian_at_eps_scaled_by_the_share():
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    eps, delta = 1.0, 1.67e-6
    s = gaussian_sigma(eps, delta)
    assert GaussianPrivacyLoss(s, 1.0).get_delta_for_epsilon(eps) <= delta
    assert GaussianPrivacyLoss(s * 0.99, 1.0).get_delta_for_epsilon(eps) > delta  # the smallest, to 1%
    assert warmup_sigma(eps, delta, 0.25) == pytest.approx(2 * s)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_the_steps_sigma_is_calibrated_on_the_composition_with_the_warmup(accountant):
    eps, delta = 1.0, 1.67e-6
    q, steps = poisson_plan(6000, 400, 3)
    prefix = warmup_sigma(eps, delta, 0.1)
    plain = calibrate_sigma(eps, delta, q, steps, accountant)
    composed = calibrate_sigma(eps, delta, q, steps, accountant, prefix)
    assert composed > plain * 1.01  # the warm-up costs the steps some noise
    assert epsilon_for(composed, q, steps, delta, accountant, prefix) <= eps
    # the same σ without the warm-up counted would claim less than was spent: the prefix is in the ε
    assert epsilon_for(composed, q, steps, delta, accountant) < epsilon_for(composed, q, steps, delta, accountant, prefix)
    pld = check_accountants(composed, q, steps, delta, accountant, prefix)
    assert pld == pytest.approx(pld_epsilon(composed, q, steps, delta, prefix=prefix))
    assert pld <= eps * 1.03


def test_plan_composes_the_warmup_and_the_config_refuses_it_without_dp():
    cfg = FinetuneConfig(eps=2.0, batch=20, epochs=2, warmup=0.1)
    plan = plan_privacy(cfg, 200)
    assert plan.warmup_sigma == pytest.approx(warmup_sigma(2.0, default_delta(200), 0.1))
    assert plan.sigma > plan_privacy(FinetuneConfig(eps=2.0, batch=20, epochs=2), 200).sigma
    with pytest.raises(ValueError, match="warm-up"):
        FinetuneConfig(non_private=True, warmup=0.1)
    with pytest.raises(ValueError):
        FinetuneConfig(eps=1.0, warmup=0.9)


def test_a_sweep_refuses_to_compose_a_run_that_recorded_a_warmup():
    with pytest.raises(ConfigError, match="warm-up"):
        check_recorded([{"trial": "t1", "sigma": 1.0, "q": 0.1, "steps": 10, "warmup_sigma": 20.0}], [])
