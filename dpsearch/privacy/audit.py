"""Empirical privacy audit of dpsearch's DP-SGD: a check that would catch a broken guarantee.

Steinke, Nasr & Jagielski (2023), "Privacy auditing with one (1) training run": m canaries, each
included in the training set with probability 1/2, one DP-SGD run, then the auditor guesses which
canaries were in from their scores. For an (ε, δ)-DP run, the number of correct guesses is dominated
by a binomial with success rate e^ε/(1+e^ε) (plus a δ term), so many correct guesses give a lower
bound on ε at confidence 1-β. A lower bound above the claimed ε proves the implementation broken; a
lower bound below it proves nothing about privacy (audits in one run are loose) and is reported so.

The run goes through dpsearch's own `privatize` (privacy/dpsgd.py: Opacus, Poisson sampling) and `dp_sgd_epoch` loop on
a linear model. Each canary is a "Dirac" input: one input coordinate no other example uses, so its
weight column moves only by that canary's clipped gradient and the noise (the strongest input-space
canary for a linear model). The number of guesses is fixed before the run (a small grid, Bonferroni-
corrected), so the bound is not inflated by picking thresholds after seeing the scores.

No library we use implements the one-run bound (jax_privacy has one, with JAX as a dependency),
so `p_value` follows the paper's Algorithm 2 (Theorem 5.2), δ term included.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

BREAKS = ("noise", "clipping")


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[≥ v correct of r guesses] for an (ε, δ)-DP run with m canaries (paper's Algorithm 2)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    rate = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, rate)
    alpha, acc = 0.0, 0.0
    for i in range(1, v + 1):
        acc += stats.binom.pmf(v - i, r, rate)
        alpha = max(alpha, acc / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def eps_lower_bound(m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """Largest ε rejected at level beta: the run is not (ε, δ)-DP for any ε below it."""
    if r == 0 or p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return math.inf
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


def guesses(scores: np.ndarray, included: np.ndarray, r: int) -> int:
    """Correct guesses when the r/2 highest scores are called 'in' and the r/2 lowest 'out'."""
    order = np.argsort(scores)
    k = r // 2
    return int(included[order[len(order) - k:]].sum() + (~included[order[:k]]).sum())


@dataclass
class AuditResult:
    config: str  # "correct" or the broken part
    claimed_eps: float
    delta: float
    sigma: float  # as calibrated for the claim
    q: float
    steps: int
    clip: float
    m: int
    canaries_in: int
    beta: float
    by_guesses: list[dict] = field(default_factory=list)  # r, correct, eps lower bound
    eps_lower: float = 0.0  # max over the grid, each at beta / len(grid)

    @property
    def violated(self) -> bool:
        return self.eps_lower > self.claimed_eps

    def to_dict(self) -> dict:
        return {**asdict(self), "violated": self.violated}


def canary_audit(real_x, real_y, num_classes: int, *, eps: float, delta: float, batch: int, epochs: int,
                 clip: float = 1.0, lr: float = 1.0, m: int = 1000, canary_scale: float = 100.0,
                 accountant: str = "prv", broken: str | None = None, seed: int = 0, beta: float = 0.05,
                 grid: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0)) -> AuditResult:
    """One DP-SGD run with m Dirac canaries (see module docstring), calibrated for (eps, delta).

    broken="noise" trains with σ = 0; broken="clipping" clips at 10⁴·C while adding the same σC noise,
    i.e. the gradients are not clipped: both keep claiming (eps, delta), and the audit must catch them.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from dpsearch.privacy.dpsgd import dp_sgd_epoch, privatize
    from dpsearch.privacy import calibrate_sigma, poisson_plan

    if broken not in (None, *BREAKS):
        raise ValueError(f"broken must be one of {BREAKS} or None, not {broken!r}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    real_x = torch.as_tensor(real_x, dtype=torch.float32).flatten(1)
    d = real_x.shape[1]
    included = torch.rand(m, generator=g) < 0.5
    canary_y = torch.randint(0, num_classes, (m,), generator=g)
    canary_x = torch.zeros(m, d + m)
    canary_x[torch.arange(m), d + torch.arange(m)] = canary_scale
    x = torch.cat([F.pad(real_x, (0, m)), canary_x[included]])
    y = torch.cat([torch.as_tensor(real_y).long(), canary_y[included]])
    n = len(x)
    q, steps = poisson_plan(n, batch, epochs)
    sigma = calibrate_sigma(eps, delta, q, steps, accountant)

    class PerExampleCE(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(d + m, num_classes, bias=False)
            nn.init.zeros_(self.linear.weight)

        def forward(self, xb, yb):
            return F.cross_entropy(self.linear(xb), yb, reduction="none")

    module = PerExampleCE()
    trainable = list(module.parameters())
    optimizer = torch.optim.SGD(trainable, lr=lr)
    run_sigma, run_clip = sigma, clip
    if broken == "noise":
        run_sigma = 0.0
    elif broken == "clipping":
        run_clip, run_sigma = clip * 1e4, sigma / 1e4  # same noise std σC; no gradient is ever clipped
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    _, dp_module, dp_opt, dp_loader = privatize(module, optimizer, loader, run_sigma, run_clip, accountant)
    for _ in range(epochs):
        dp_sgd_epoch(dp_module, dp_opt, dp_loader, trainable, "cpu", physical_batch=batch)
    dp_module._close()

    w = module.linear.weight.detach()[:, d:]  # [classes, m]: canary i's column
    direction = F.one_hot(canary_y, num_classes).T.float() - 1.0 / num_classes  # where its gradient pushes
    scores = (w * direction).sum(0).numpy()
    inc = included.numpy()
    res = AuditResult(config=broken or "correct", claimed_eps=eps, delta=delta, sigma=sigma, q=q, steps=steps,
                      clip=clip, m=m, canaries_in=int(inc.sum()), beta=beta)
    level = beta / len(grid)
    for frac in grid:
        r = 2 * max(1, int(frac * m) // 2)
        v = guesses(scores, inc, r)
        lb = eps_lower_bound(m, r, v, delta, level)
        res.by_guesses.append({"guesses": r, "correct": v, "eps_lower": lb})
    res.eps_lower = max(b["eps_lower"] for b in res.by_guesses)
    return res


def format_audit(results: list[AuditResult]) -> str:
    lines = [f"{'configuration':<14} {'claimed ε':>9} {'δ':>7} {'σ':>7} {'q':>7} {'steps':>5} {'m':>5}  "
             f"{'best guesses (correct/r)':>24}  {'ε lower bound':>13}  verdict"]
    for r in results:
        best = max(r.by_guesses, key=lambda b: b["eps_lower"])
        verdict = ("BROKEN: lower bound exceeds the claim" if r.violated else
                   "consistent with the claim (an audit cannot prove privacy)")
        lines.append(f"{r.config:<14} {r.claimed_eps:>9.2f} {r.delta:>7.2g} {r.sigma:>7.3f} {r.q:>7.4f} {r.steps:>5d} "
                     f"{r.m:>5d}  {best['correct']:>12d}/{best['guesses']:<11d}  {r.eps_lower:>13.3f}  {verdict}")
    lines.append(f"ε lower bounds at {100 * (1 - results[0].beta):.0f}% confidence (Bonferroni over "
                 f"{len(results[0].by_guesses)} pre-set guess counts), Steinke-Nasr-Jagielski one-run audit with δ term.")
    return "\n".join(lines)


__all__ = ["p_value", "eps_lower_bound", "guesses", "canary_audit", "AuditResult", "format_audit", "BREAKS"]
