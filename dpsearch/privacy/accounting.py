"""σ calibration with Opacus' accountants, and an independent cross-check with dp-accounting's PLD.

The mechanism accounted for is the one `finetune.py` runs: T steps of the Poisson-subsampled
Gaussian mechanism, sampling rate q, noise σ·C on the sum of per-sample gradients clipped to C;
with a warm-up (`prefix` = σ_w), first one Gaussian release of noise multiplier σ_w on the whole
set (privacy/class_means.py), composed with the steps in every accountant below.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from dpsearch.config import ConfigError, check_eps_range

log = logging.getLogger(__name__)


def poisson_plan(n: int, batch: int, epochs: int) -> tuple[float, int]:
    """(q, steps) exactly as privacy/dpsgd.py's Poisson loader runs them: q = 1/⌈N/B⌉, ⌈N/B⌉ steps per epoch.

    q is then ≈ B/N (never above it), and the accountant sees the sampling that really happens.
    """
    per_epoch = math.ceil(n / batch)
    return 1.0 / per_epoch, per_epoch * epochs


# The orders Opacus' RDP accountant minimises over: its defaults (1.1 to 10.9, 12 to 63) and larger ones, where the
# optimum lies for small ε (large σ, small q). A minimum over a superset: every ε is the same or tighter, and Opacus'
# "Optimal order is the largest alpha ... expanding the range of alphas" notice no longer fires at the ε runs use.
RDP_ALPHAS = tuple(RDPAccountant.DEFAULT_ALPHAS) + (64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)
_EXTREME_ORDER = "Optimal order is the (largest|smallest) alpha"


def accountant_epsilon(acc, delta: float) -> float:
    """ε at δ of an Opacus accountant (its history set): RDP over RDP_ALPHAS; PRV as it is."""
    if acc.mechanism() == "rdp":
        return float(acc.get_epsilon(delta=delta, alphas=list(RDP_ALPHAS)))
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # A warm-up entry has q = 1: Opacus' PRV evaluates log(1 - q) = -inf on its way to the plain Gaussian's PRV
        # (the right one: checked against dp-accounting's PLD by check_accountants).
        # PRV sizes its discretisation domain with an RDP bound at δ/8000T over Opacus' default orders; at small ε
        # (large σ, small q) that bound's optimum is the largest order and Opacus says so. It only widens the
        # domain; the ε PRV returns is not an RDP bound, so the notice says nothing about it.
        warnings.filterwarnings("ignore", message=_EXTREME_ORDER)
        return float(acc.get_epsilon(delta=delta))


# PRV and PLD are both numerical approximations of the same privacy curve; they must agree this closely.
ACCOUNTANT_REL_TOL, ACCOUNTANT_ABS_TOL = 0.03, 0.01


@functools.lru_cache(maxsize=1024)  # a sweep's report asks for the same σ many times; every answer passed the accountant
# (a remembered σ, privacy/sigma_memo.py, may differ from a fresh search's; a resumed run keeps its own σ, finetune.py)
def calibrate_sigma(eps: float, delta: float, q: float, steps: int, accountant: str = "prv",
                    prefix: float | None = None) -> float:
    """The smallest σ (to 0.2%) for which the run is (ε, δ)-DP by `accountant`, in bounded time and memory.
    With `prefix` (a warm-up's σ_w), the steps' σ for the composition of that release and the steps.

    Opacus' own search (get_noise_multiplier) evaluates PRV some twenty times, and at large ε each
    evaluation costs seconds and GBs (ε = 1000 ran 14 minutes to 19 GB). So the search runs on
    dp-accounting's PLD, which is fast at every ε accepted here, and the answer is then checked, and
    raised where needed, with the requested Opacus accountant: the final σ is one that accountant accepts.

    Where N is public, a σ found before for the same plan (privacy/sigma_memo.py) is used again once that
    accountant accepts it: the search is skipped, never the check.
    """
    from dpsearch.privacy import sigma_memo

    check_eps_range(eps)
    if not sigma_memo.in_use():
        return _search_sigma(eps, delta, q, steps, accountant, prefix)
    k = sigma_memo.key(eps, delta, q, steps, accountant, prefix)
    for known in sigma_memo.candidates(k):  # shipped, then the user's
        if epsilon_for(known, q, steps, delta, accountant, prefix) <= eps:
            log.info("σ = %.4f for this plan remembered and accepted by %s (ε ≤ %g): no search", known,
                     accountant.upper(), eps)
            return known
    sigma = _search_sigma(eps, delta, q, steps, accountant, prefix)
    sigma_memo.remember(k, sigma)
    return sigma


def _search_sigma(eps: float, delta: float, q: float, steps: int, accountant: str, prefix: float | None) -> float:
    if accountant == "rdp" and prefix is None:  # RDP is cheap at every ε: Opacus' search as it is, over RDP_ALPHAS
        with warnings.catch_warnings():
            # Opacus' search doubles σ upward from 20 until ε fits, then bisects between 0 and there: probes far from
            # the answer may have an extreme optimal order. A probe only steers the bisection; the ε of the σ returned
            # is computed by epsilon_for wherever it is recorded (memoised per process: the same value, its notices once).
            warnings.filterwarnings("ignore", message=_EXTREME_ORDER)
            return float(get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=q, steps=steps,
                                              accountant="rdp", epsilon_tolerance=min(0.01, 0.002 * eps),
                                              alphas=list(RDP_ALPHAS)))  # relative: at ε = 0.03 an absolute 0.01 over-noised by 23%
    if prefix is not None and pld_epsilon(1e4, q, steps, delta, prefix=prefix) > eps:
        raise ConfigError(f"the warm-up release alone (σ_w = {prefix:.4g}) spends ε ≥ {eps:g} at δ = {delta:g}; "
                          f"give the warm-up a smaller share of the budget")
    hi = 1.0
    while pld_epsilon(hi, q, steps, delta, prefix=prefix) > eps:
        hi *= 2
        if hi > 1e4:
            raise ConfigError(f"no noise level σ ≤ 1e4 makes {steps} steps at q = {q:.3g} (ε = {eps:g}, δ = {delta:g})-DP; "
                              f"use fewer epochs, a smaller batch or a larger ε")
    lo = hi / 2
    while lo > 1e-3 and pld_epsilon(lo, q, steps, delta, prefix=prefix) <= eps:
        hi, lo = lo, lo / 2
    while hi / lo > 1.002:
        mid = math.sqrt(lo * hi)
        if pld_epsilon(mid, q, steps, delta, prefix=prefix) <= eps:
            hi = mid
        else:
            lo = mid
    def ok(sigma: float) -> bool:  # the requested accountant has the last word
        return epsilon_for(sigma, q, steps, delta, accountant, prefix) <= eps

    if ok(hi):
        return float(hi)
    for _ in range(40):  # PRV sits up to its eps_error (0.01) above PLD: at small ε that is many percent of σ
        lo, hi = hi, hi * 1.02
        if ok(hi):
            for _ in range(4):  # to 0.125% with four more evaluations
                mid = math.sqrt(lo * hi)
                lo, hi = (lo, mid) if ok(mid) else (mid, hi)
            return float(hi)
    raise ConfigError(f"the {accountant.upper()} accountant does not reach ε = {eps:g} near PLD's σ = {hi:.4f}; "
                      f"the accountants disagree, refusing to run")


def check_accountants(sigma: float, q: float, steps: int, delta: float, accountant: str,
                      prefix: float | None = None) -> float:
    """dp-accounting's PLD on the same mechanism must confirm the accountant's ε; returns PLD's ε.

    PRV and PLD must agree within ACCOUNTANT_REL_TOL·ε + ACCOUNTANT_ABS_TOL; RDP is an upper bound,
    so it may be larger than PLD but never smaller by more than that tolerance.
    """
    eps = epsilon_for(sigma, q, steps, delta, accountant, prefix)
    pld = pld_epsilon(sigma, q, steps, delta, prefix=prefix)
    tol = ACCOUNTANT_REL_TOL * pld + ACCOUNTANT_ABS_TOL
    if eps < pld - tol:
        # PLD's pessimistic discretisation (1e-3 per step) adds up over many steps at small ε: a finer grid
        # before refusing (RDP ε = 0.023 against PLD 0.040 at 1e-3 and 0.018 at 1e-4, 1,000 steps)
        pld = pld_epsilon(sigma, q, steps, delta, interval=1e-4, prefix=prefix)
        tol = ACCOUNTANT_REL_TOL * pld + ACCOUNTANT_ABS_TOL
    if eps < pld - tol or (accountant == "prv" and eps > pld + tol):
        raise RuntimeError(f"privacy accountants disagree on σ = {sigma:.4f}, q = {q:.4g}, {steps} steps, δ = {delta:g}: "
                           f"{accountant.upper()} ε = {eps:.4f}, dp-accounting PLD ε = {pld:.4f} (tolerance {tol:.4f}); "
                           f"refusing to run on a guarantee that is not confirmed")
    return pld


def history(sigma: float, q: float, steps: int, prefix: float | None = None) -> list[tuple[float, float, int]]:
    """The run as Opacus' accountants take it: the warm-up release (σ_w, q = 1, once), then the steps."""
    return ([(prefix, 1.0, 1)] if prefix is not None else []) + [(sigma, q, steps)]


@functools.lru_cache(maxsize=4096)  # deterministic in its arguments: calibration's check, then the run's record
def epsilon_for(sigma: float, q: float, steps: int, delta: float, accountant: str = "prv",
                prefix: float | None = None) -> float:
    acc = create_accountant(accountant)
    acc.history = history(sigma, q, steps, prefix)
    return accountant_epsilon(acc, delta)


def pld_epsilon(sigma: float, q: float, steps: int, delta: float, interval: float = 1e-3,
                prefix: float | None = None) -> float:
    """Independent check: dp-accounting's privacy-loss-distribution accountant on the same mechanism."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    if prefix is not None:
        event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(prefix), event])
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def gaussian_sigma(eps: float, delta: float) -> float:
    """The smallest noise multiplier (to 0.1%) making one Gaussian release (ε, δ)-DP, by the exact privacy curve of
    the Gaussian mechanism (dp-accounting's GaussianPrivacyLoss; Balle & Wang's analytic Gaussian)."""
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss

    def ok(s: float) -> bool:
        return GaussianPrivacyLoss(standard_deviation=s, sensitivity=1.0).get_delta_for_epsilon(eps) <= delta

    lo, hi = 1e-3, 1.0
    while not ok(hi):
        lo, hi = hi, hi * 2
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def warmup_sigma(eps: float, delta: float, share: float) -> float:
    """σ_w of a warm-up release given `share` of the budget in Gaussian-DP terms: one Gaussian of σ_E alone is
    (ε, δ)-DP, and Gaussians compose as 1/σ² adds, so σ_w = σ_E/√share spends exactly that share of 1/σ_E².
    A public function of (ε, δ, share): the warm-up's noise is fixed before any record is read."""
    return gaussian_sigma(eps, delta) / math.sqrt(share)


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
    randomness: str = "torch-generator-os-seeded"  # or "os-csprng" (--secure-rng); never a recorded seed
    sampling: str = "poisson"
    clipping: str = "hooks"  # per-sample clipping path: "bookkeeping" or Opacus' "hooks" (same clip, noise, sampler)
    unit: str = "one private image (add/remove)"
    method: str = "attention"  # what trained in `layers`: whole attention modules, or LoRA adapters of rank lora_rank
    lora_rank: int | None = None
    multiplicity: int = 1  # (timestep, noise) draws averaged inside each image's one clipped gradient
    ema: float | None = None  # EMA decay of the released weights (post-processing); None: the last iterate
    warmup_share: float | None = None  # a DP class-mean warm-up's share of the budget (Gaussian-DP terms); None: none
    warmup_sigma: float | None = None  # its noise multiplier σ_w, composed with the steps in eps and eps_pld_check

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        warm = f"warm-up on noisy class means σ_w = {self.warmup_sigma:.4g} composed with " if self.warmup_sigma else ""
        return (f"(ε = {self.eps:.3f}, δ = {self.delta:g})-DP by the {self.accountant.upper()} accountant "
                f"[PLD check ε = {self.eps_pld_check:.3f}]; {warm}σ = {self.sigma:.4f}, q = {self.q:.5f}, "
                f"steps = {self.steps}, C = {self.clip:g}, layers {self.layers}; noise and sampling from fresh OS entropy "
                f"({self.randomness})")
