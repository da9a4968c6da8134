"""The counting objective: a classifier's accuracy on a held-out private slice, released through the
Gaussian mechanism.

Why: a synthetic validation set V scores a classifier by how much its training data looks like V, so it
prefers whatever V's own generator did (e.g. V's guidance scale) and ranks trials loosely. The number
of held-out private records a classifier gets right is a count: adding or removing one record changes
it by at most 1 (sensitivity 1), so the Gaussian mechanism releases it with noise calibrated by
dp-accounting, and the released accuracy is unbiased.

Every query (one per trial, one per free post-processing candidate) is a Gaussian mechanism on the same
records, chosen adaptively; their composition is accounted exactly by dp-accounting's PLD accountant
(a Gaussian composes into a Gaussian). The count's denominator is the slice size, treated as public
like N in every DP-SGD run. The noise comes from fresh OS entropy (randomness.py) and the exact count
never leaves this module.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from dpsearch.config import ConfigError
from dpsearch.data import ImageSet


def _event(sigma: float, queries: int):
    from dp_accounting import dp_event

    return dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma), queries)


def count_epsilon(sigma: float, queries: int, delta: float) -> float:
    """ε at δ of `queries` adaptive Gaussian counts of sensitivity 1 with noise σ (PLD)."""
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    acc = PLDAccountant()
    acc.compose(_event(sigma, queries))
    return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=256)
def count_sigma(queries: int, eps: float, delta: float) -> float:
    """The smallest σ for which `queries` counts compose to (ε, δ). Memoised per process, in memory only (pure and
    deterministic in its arguments; δ is public only where the space declares n_public, so nothing is written):
    planning a sweep calibrates it once, 1.5-5 s of dp-accounting's search."""
    from dp_accounting.mechanism_calibration import calibrate_dp_mechanism
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    if queries < 1:
        raise ConfigError(f"a counting objective needs at least one query, got {queries}")
    if not (math.isfinite(eps) and eps > 0 and 0 < delta < 1):
        raise ConfigError(f"counts need ε > 0 and 0 < δ < 1, got ε = {eps}, δ = {delta}")
    return float(calibrate_dp_mechanism(PLDAccountant, lambda s: _event(s, queries), eps, delta))


@dataclass
class NoisyCount:
    """Held-out private records, the noise every query on them gets, and the slice's public (planned) size,
    the denominator: dividing by the exact count would publish it (docs/privacy.md)."""

    holdout: ImageSet
    sigma: float
    n_public: int

    def accuracy(self, correct: int) -> float:
        """round(correct + N(0, σ²)) / n: the released accuracy of a classifier that got `correct` of the held-out
        records right (evaluate.py counts them; this is the only place the count goes). The Gaussian is drawn
        from the OS CSPRNG (one number: the cost is nil) and the noisy count is rounded to a whole number before it
        leaves, so no low-order float bits of the sample can reveal the exact count (Mironov's floating-point
        attack on the Laplace/Gaussian mechanisms); rounding is post-processing."""
        from dpsearch.privacy.randomness import MechanismRandomness

        noise = MechanismRandomness(secure=True).gaussian_like(torch.zeros((), dtype=torch.float64), self.sigma)
        return float(round(int(correct) + float(noise))) / self.n_public


__all__ = ["NoisyCount", "count_epsilon", "count_sigma"]
