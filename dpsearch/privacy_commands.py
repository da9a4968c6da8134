"""The `dpsearch privacy` verbs: the planning calculators and a sweep's privacy report (commands.py holds the
other verbs; like them, these parse nothing and only call the module that owns the work)."""

from __future__ import annotations

from dpsearch.commands import sweep_path
from dpsearch.config import ConfigError, default_delta


def cmd_privacy_calc(a) -> int:
    from dpsearch.privacy import calibrate_sigma, epsilon_for, pld_epsilon, poisson_plan
    from dpsearch.privacy.accounting import warmup_sigma

    if a.n < 1 or a.batch < 1 or a.epochs < 1:
        raise ConfigError("--n, --batch and --epochs must be ≥ 1")
    if a.batch > a.n:
        raise ConfigError(f"batch size {a.batch} is larger than N = {a.n}; use --batch ≤ {a.n}")
    delta = a.delta if a.delta is not None else default_delta(a.n)
    if not (0 < delta < 1.0 / a.n):
        raise ConfigError(f"δ = {delta:g} must be in (0, 1/N = {1.0 / a.n:.3g}); e.g. {default_delta(a.n):g}")
    q, steps = poisson_plan(a.n, a.batch, a.epochs)
    if a.what == "sigma":
        if not a.eps > 0:
            raise ConfigError(f"ε must be a positive finite number, got {a.eps}")
        if a.warmup is not None and not 0 < a.warmup <= 0.5:
            raise ConfigError(f"--warmup is a share of the budget in (0, 0.5], got {a.warmup}; e.g. 0.05")
        sigma_w = warmup_sigma(a.eps, delta, a.warmup) if a.warmup is not None else None
        sigma = calibrate_sigma(a.eps, delta, q, steps, a.accountant, prefix=sigma_w)
    else:
        if not a.sigma > 0:
            raise ConfigError(f"σ must be > 0, got {a.sigma}")
        sigma_w = a.warmup_sigma
        if sigma_w is not None and not sigma_w > 0:
            raise ConfigError(f"--warmup-sigma must be > 0, got {sigma_w}")
        sigma = a.sigma
    eps = epsilon_for(sigma, q, steps, delta, a.accountant, prefix=sigma_w)
    warm = f"class-mean warm-up σ_w = {sigma_w:.4f} composed first; " if sigma_w is not None else ""
    print(f"σ = {sigma:.4f}: (ε = {eps:.3f}, δ = {delta:g})-DP by the {a.accountant.upper()} accountant "
          f"[dp-accounting PLD: ε = {pld_epsilon(sigma, q, steps, delta, prefix=sigma_w):.3f}]; {warm}Poisson q = {q:.5f}, "
          f"steps = {steps} (N = {a.n}, B = {a.batch}, {a.epochs} epochs)")
    return 0


def cmd_privacy_report(a) -> int:
    import json

    from dpsearch.privacy.report import format_report
    from dpsearch.sweep_store import sweep_report

    rep = sweep_report(sweep_path(a.sweep, a.storage))
    store = rep.pop("tracking_store", None)
    if a.tracking_store:
        if store is None:
            raise ConfigError(f"sweep {a.sweep} did not run private selection: its report already covers the whole "
                              f"tracking store")
        rep["tracking_store"] = store
        print(json.dumps(store, indent=2) if a.json else format_report(rep, tracking_store=True))
        return 0
    # private selection: the release's part only, with no K, trial ids or rows beside its figure
    print(json.dumps(rep, indent=2) if a.json else format_report({**rep, "tracking_store": store} if store else rep))
    return 0
