"""σ calibration with Opacus' accountants, and an independent cross-check with dp-accounting's PLD.

The mechanism accounted for is the one `finetune.py` runs: T steps of the Poisson-subsampled
Gaussian mechanism, sampling rate q, noise σ·C on the sum of per-sample gradients clipped to C.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier


def poisson_plan(n: int, batch: int, epochs: int) -> tuple[float, int]:
    """(q, steps) exactly as Opacus' DPDataLoader runs them: q = 1/⌈N/B⌉, ⌈N/B⌉ steps per epoch.

    q is then ≈ B/N (never above it), and the accountant sees the sampling that really happens.
    """
    per_epoch = math.ceil(n / batch)
    return 1.0 / per_epoch, per_epoch * epochs


def calibrate_sigma(eps: float, delta: float, q: float, steps: int, accountant: str = "prv") -> float:
    """The smallest σ (to Opacus' tolerance) for which the run is (ε, δ)-DP by `accountant`."""
    return float(get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=q, steps=steps,
                                      accountant=accountant, epsilon_tolerance=0.01))


def epsilon_for(sigma: float, q: float, steps: int, delta: float, accountant: str = "prv") -> float:
    acc = create_accountant(accountant)
    acc.history = [(sigma, q, steps)]
    return float(acc.get_epsilon(delta=delta))


def pld_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Independent check: dp-accounting's privacy-loss-distribution accountant on the same mechanism."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@dataclass(frozen=True)
class PrivacyRecord:
    """Every privacy parameter of one DP fine-tune, as written to privacy.json."""

    eps_target: float
    eps: float  # spent, from the accountant below
    delta: float
    accountant: str
    eps_pld_check: float  # dp-accounting PLD on the same (σ, q, steps)
    sigma: float
    q: float
    steps: int
    epochs: int
    clip: float
    batch: int
    n: int
    layers: str
    trainable_params: int
    trainable_fraction: float
    sampling: str = "poisson"
    unit: str = "one private image (add/remove)"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"(ε = {self.eps:.3f}, δ = {self.delta:g})-DP by the {self.accountant.upper()} accountant "
                f"[PLD check ε = {self.eps_pld_check:.3f}]; σ = {self.sigma:.4f}, q = {self.q:.5f}, "
                f"steps = {self.steps}, C = {self.clip:g}, layers {self.layers}")
