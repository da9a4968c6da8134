"""The DP-SGD mechanism as it runs: the step plan against the loader, and fresh randomness."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dpsearch.privacy import poisson_plan
from dpsearch.privacy.dpsgd import check_loader, poisson_loader
from dpsearch.privacy.randomness import MechanismRandomness

GRID_N = [1, 2, 7, 100, 401, 999, 55000, 60000]
GRID_B = [1, 3, 50, 128, 333, 646, 1000, 4096]


def test_step_plan_matches_the_loader_over_a_grid_of_n_and_b():
    mismatched_in_opacus = []
    for n in GRID_N:
        data = TensorDataset(torch.zeros(n, 1), torch.zeros(n))
        for b in (b for b in GRID_B if b <= n):
            q, steps = poisson_plan(n, b, 3)
            per_epoch = steps // 3
            assert per_epoch == math.ceil(n / b) and q == 1 / per_epoch and q <= b / n
            loader = poisson_loader(data, q, per_epoch, MechanismRandomness())
            check_loader(loader, q, per_epoch)  # raises on any mismatch
            assert len(loader) == per_epoch and 1 / len(loader) == q
            if int(1 / q) != per_epoch:  # what Opacus' own sampler would have run
                mismatched_in_opacus.append((n, b))
    assert (60000, 646) in mismatched_in_opacus  # the case the plan check exists for


def test_a_loader_that_differs_from_the_plan_is_refused_before_training():
    data = TensorDataset(torch.zeros(100, 1), torch.zeros(100))
    loader = poisson_loader(data, 1 / 10, 10, MechanismRandomness())
    with pytest.raises(RuntimeError, match="refusing to train"):
        check_loader(loader, 1 / 10, 9)
    with pytest.raises(RuntimeError, match="refusing to train"):
        check_loader(loader, 1 / 9, 10)


@pytest.mark.parametrize("secure", [False, True])
def test_each_run_draws_fresh_noise_and_masks_whatever_the_global_seed(secure):
    ref = torch.zeros(1000)
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        rng = MechanismRandomness(secure=secure)
        draws.append((rng.gaussian_like(ref, 1.0), rng.poisson_mask(1000, 0.5)))
    assert not torch.equal(draws[0][0], draws[1][0])
    assert not torch.equal(draws[0][1], draws[1][1])


@pytest.mark.parametrize("secure", [False, True])
def test_randomness_has_the_distribution_the_accountant_assumes(secure):
    rng = MechanismRandomness(secure=secure)
    z = rng.gaussian_like(torch.zeros(200_000, dtype=torch.float64), 2.5)
    assert z.dtype == torch.float64 and z.mean().abs() < 0.03 and z.std().item() == pytest.approx(2.5, rel=0.01)
    from scipy import stats

    assert stats.kstest(z.numpy() / 2.5, "norm").pvalue > 1e-4
    mask = rng.poisson_mask(200_000, 0.1)
    assert mask.dtype == torch.bool and mask.float().mean().item() == pytest.approx(0.1, rel=0.03)
