"""What the whole search costs: the released model's (ε, δ), covering every trial, the selection and
the validation generator. Opacus answers "is one trial (ε, δ)-DP?"; this answers the sweep.

Both bounds are RDP (dp-accounting), built on the *worst* per-trial RDP curve over the space's
privacy-relevant grid (every batch × epochs choice, σ calibrated per cell), not on the trials that
happened to run: with an adaptive searcher, which mechanism runs next depends on earlier outputs, so only
an a-priori bound that holds for every possible choice composes soundly. Equal ε does not mean equal RDP
curves, hence the pointwise maximum.

- ``adaptive`` (TPE, or any fixed number K of trials): K-fold composition of the worst curve. When every
  trial runs the same mechanism (one batch × epochs cell), dp-accounting's PLD composes the K runs too
  and the tighter of the two bounds is used: PLD is exact up to its discretisation, RDP's conversion to
  (ε, δ) loses a little. With several cells, an adaptive searcher can mix them, and a pointwise maximum
  of PLDs is not a PLD, so RDP's worst curve is the only sound bound we have there.
- ``geometric | logarithmic | poisson`` private selection (Papernot & Steinke, ICLR 2022): K is drawn at
  random with mean μ, the search is non-adaptive random search, only the best trial is released;
  repeat-and-select on the worst curve.
Either is then composed with the validation generator's own mechanism and converted to (ε, δ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import numpy as np
from dp_accounting.dp_event import (GaussianDpEvent, PoissonSampledDpEvent, RepeatAndSelectDpEvent,
                                    SelfComposedDpEvent)
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

# dp-accounting's default orders plus large ones: repeat-and-select's constant term is a minimum over
# orders, and for near-pure mechanisms the best order is large.
ORDERS = np.array(list(rdp_lib.DEFAULT_RDP_ORDERS) + [2048, 4096, 8192, 16384], dtype=float)

SELECTIONS = {"geometric": 1.0, "logarithmic": 0.0, "poisson": math.inf}  # truncated neg. binomial shape


@dataclass(frozen=True)
class Mechanism:
    """One DP-SGD run as the accountant sees it: T steps of the Poisson-subsampled Gaussian."""

    sigma: float
    q: float
    steps: int

    def event(self):
        return SelfComposedDpEvent(PoissonSampledDpEvent(self.q, GaussianDpEvent(self.sigma)), self.steps)

    def pld_eps(self, times: int, delta: float, validation: Optional["Mechanism"] = None,
                validation_runs: int = 1) -> float:
        """ε of `times` adaptive runs of this mechanism (and `validation_runs` of `validation`) by dp-accounting's PLD."""
        from dp_accounting.pld import pld_privacy_accountant

        acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
        acc.compose(self.event(), times)
        if validation is not None:
            acc.compose(validation.event(), validation_runs)
        return float(acc.get_epsilon(delta))

    def rdp(self, orders: np.ndarray = ORDERS) -> np.ndarray:
        acc = rdp_lib.RdpAccountant(orders=list(orders))
        acc.compose(self.event())
        return np.asarray(acc.rdp, dtype=float)


def worst_curve(mechanisms: Iterable[Mechanism], orders: np.ndarray = ORDERS) -> np.ndarray:
    """Pointwise maximum of the RDP curves: an RDP bound for a trial whose mechanism is any of them."""
    curves = [m.rdp(orders) for m in mechanisms]
    if not curves:
        raise ValueError("no trial mechanisms to bound")
    return np.max(np.stack(curves), axis=0)


def repeat_and_select(curve: np.ndarray, mean: float, selection: str, orders: np.ndarray = ORDERS) -> np.ndarray:
    """RDP of running a random number K (mean μ) of trials and releasing only the best.

    dp-accounting exposes this theorem through RepeatAndSelectDpEvent, which wraps *one* event; our
    trials differ, and the theorem needs the worst curve over them, which no DpEvent expresses. So we
    call the library's own implementation on that curve (tests check it against the DpEvent path).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"private selection must be one of {sorted(SELECTIONS)}, got {selection!r}")
    if not (mean >= 1 and math.isfinite(mean)):
        raise ValueError(f"--mean-trials must be a finite number ≥ 1, got {mean}")
    return np.asarray(rdp_lib._compute_rdp_repeat_and_select(list(orders), list(curve), mean, SELECTIONS[selection]))


def rdp_to_dp(curve: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> tuple[float, float]:
    """(ε, optimal order) for the given δ."""
    eps, order = rdp_lib.compute_epsilon(list(orders), list(curve), delta)
    return float(eps), float(order)


@dataclass
class SearchGuarantee:
    """The released model's guarantee and what it covers."""

    eps: float
    delta: float
    mode: str  # adaptive | geometric | logarithmic | poisson
    trials: Optional[int]  # K for adaptive; None when K is random
    mean_trials: Optional[float]
    validation_eps: Optional[float]  # the validation generator alone, same δ, same accountant
    trial_eps_worst: float  # one trial alone at the worst curve, same δ and accountant (RDP)
    grid: list[dict] = field(default_factory=list)  # the per-cell mechanisms the worst curve covers
    accountant: str = "rdp (dp-accounting)"
    order: float = float("nan")
    eps_rdp: Optional[float] = None  # the RDP bound, when PLD was tighter and is the one reported

    def to_dict(self) -> dict:
        return asdict(self)


def poisson_k_at_least_one(mean: float) -> float:
    """P(K ≥ 1) for K ~ Poisson(μ). dpsearch redraws a Poisson K of 0 (a sweep that trains nothing helps no one),
    so K is the Poisson conditioned on K ≥ 1. Conditioning on an event of probability p that the data does not
    influence turns (ε, δ) into (ε, δ/p): for any S, P[M(D) ∈ S | K ≥ 1] ≤ (e^ε P[M(D') ∈ S] + δ) / p, and the
    K = 0 output (nothing) is never in the conditioned range. The bound is therefore computed at δ·p."""
    return 1.0 - math.exp(-mean)


def search_guarantee(grid: list[Mechanism], delta: float, validation: Optional[Mechanism], *,
                     trials: Optional[int] = None, selection: Optional[str] = None,
                     mean_trials: Optional[float] = None, orders: np.ndarray = ORDERS,
                     validation_runs: int = 1) -> SearchGuarantee:
    """(ε, δ) of the released model of a sweep (see the module docstring for the two modes). validation_runs:
    how often the validation generator ran (a sweep that died before storing V makes it again)."""
    worst = worst_curve(grid, orders)
    inner_delta = delta  # the δ the RDP bound is converted at
    if selection is None:
        if trials is None or trials < 1:
            raise ValueError("an adaptive or fixed-size search needs its number of trials K ≥ 1")
        total = trials * worst
        mode = "adaptive"
    else:
        total = repeat_and_select(worst, mean_trials, selection, orders)
        mode = selection
        if selection == "poisson":
            inner_delta = delta * poisson_k_at_least_one(mean_trials)
    val_eps = None
    if validation is not None:
        vcurve = validation.rdp(orders)
        total = total + validation_runs * vcurve
        val_eps = rdp_to_dp(validation_runs * vcurve, delta, orders)[0]
    eps, order = rdp_to_dp(total, inner_delta, orders)
    accountant, rdp_eps = "rdp (dp-accounting)", None
    if selection is None and len(set(grid)) == 1:
        pld = grid[0].pld_eps(trials, delta, validation, validation_runs)
        if pld < eps:
            accountant, rdp_eps, eps = "pld (dp-accounting)", eps, pld
    return SearchGuarantee(eps=eps, delta=delta, mode=mode, trials=trials if selection is None else None,
                           mean_trials=mean_trials if selection else None, validation_eps=val_eps,
                           trial_eps_worst=rdp_to_dp(worst, delta, orders)[0],
                           grid=[asdict(m) for m in grid], accountant=accountant, order=order, eps_rdp=rdp_eps)


def repeat_and_select_event_eps(mechanism: Mechanism, mean: float, selection: str, delta: float) -> float:
    """The same bound through dp-accounting's public RepeatAndSelectDpEvent (one mechanism only)."""
    acc = rdp_lib.RdpAccountant(orders=list(ORDERS))
    acc.compose(RepeatAndSelectDpEvent(mechanism.event(), mean, SELECTIONS[selection]))
    return float(acc.get_epsilon(delta))


def coverage_statement(g: SearchGuarantee) -> str:
    """Plain language: what the number covers and what it does not."""
    if g.mode == "adaptive":
        what = (f"all {g.trials} trials of an adaptive search (each trial's mechanism bounded by the worst one the "
                f"space allows), composed")
    else:
        what = (f"a {g.mode}-distributed number of non-adaptive random-search trials (mean {g.mean_trials:g}) of "
                f"which only the best trial's model and score are released (Papernot & Steinke 2022)")
    val = ("plus the validation generator that made the synthetic validation set" if g.validation_eps is not None
           else "with no validation generator")
    lines = [
        f"released model: (ε = {g.eps:.3f}, δ = {g.delta:g})-DP by {g.accountant}, covering {what}, {val}.",
        "covered: the selected model, its synthetic samples, the objective, and which configuration won.",
        "noise and Poisson sampling of every DP run come from fresh OS entropy (never a recorded seed); "
        "not covered: the oracle metrics (computed on the real test split) are not DP and not counted.",
    ]
    if g.mode != "adaptive":
        lines.append("the tracking store (MLflow, sweep storage) holds every trial's synthetic outputs and metrics: "
                     "whoever reads all of it sees the composition of all trials, not only the released model; "
                     "keep it private or delete the losing trials.")
    else:
        lines.append("the tracking store holds every trial's outputs; the bound above already covers all of them.")
    return "\n".join(lines)
