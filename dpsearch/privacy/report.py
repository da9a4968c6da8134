"""The privacy report of a sweep: every trial's (ε, δ), the validation generator's, and the released model's.

Computation only: sweep_store.py reads what a sweep stored and hands it here, so the report works on any
machine that has the sweep's storage.
"""

from __future__ import annotations

from typing import Optional

from dpsearch.config import ConfigError, default_delta
from dpsearch.privacy.accounting import calibrate_sigma, poisson_plan
from dpsearch.privacy.search_cost import Mechanism, SearchGuarantee, coverage_statement, search_guarantee


def space_grid(space, eps: float, n: int) -> list[Mechanism]:
    """Every mechanism a trial of this space can run: one per (batch, epochs) value, σ calibrated.

    Clip norm, learning rate and layer range do not change the mechanism (σ is relative to C).
    batch and epochs are whole-number parameters with finite value lists (space.py enforces it).
    """
    delta = space.delta if space.delta is not None else default_delta(n)
    grid = []
    for b in space.params.batch.values():
        for e in space.params.epochs.values():
            q, steps = poisson_plan(n, b, e)
            grid.append(Mechanism(calibrate_sigma(eps, delta, q, steps, space.accountant), q, steps))
    return grid


def guarantee_for(space, eps: float, n: int, validation: Optional[Mechanism], *, trials: Optional[int] = None,
                  selection: Optional[str] = None, mean_trials: Optional[float] = None) -> SearchGuarantee:
    delta = space.delta if space.delta is not None else default_delta(n)
    return search_guarantee(space_grid(space, eps, n), delta, validation, trials=trials, selection=selection,
                            mean_trials=mean_trials)


def stored_sweep_report(saved: dict, rows: list[dict], vp: Optional[dict], started: list[str]) -> dict:
    """The privacy report from what a sweep stored (sweep_store.py reads it): sweep.json's content, the
    summary rows, the validation generator's record and the ids of every trial ever started."""
    from dpsearch.space import SearchSpace

    opts, space = saved["options"], SearchSpace(**saved["space"])
    n = saved.get("n_private") or (vp or {}).get("n")
    if not n:
        raise ConfigError(f"sweep {saved['options'].get('name')} records no private-set size; it stopped before its "
                          f"first DP run")
    validation = Mechanism(vp["sigma"], vp["q"], vp["steps"]) if vp else None
    selection = opts.get("private_selection")
    # Every trial ever started counts, restored or not, errored included: each one touched the private data.
    k_run = max(int(opts["trials"]), len(rows), len(started))
    g = guarantee_for(space, float(opts["eps"]), int(n), validation, trials=None if selection else k_run,
                      selection=selection, mean_trials=opts.get("mean_trials"))
    trials = [{k2: r.get(k2) for k2 in ("trial", "status", "eps", "delta", "sigma", "q", "steps", "clip", "batch",
                                         "epochs", "layers", "accountant")} for r in rows]
    rep = {"sweep": opts["name"], "trials": trials, "trials_started": len(started), "validation": vp,
           "released": g.to_dict(), "statement": coverage_statement(g)}
    if selection:
        # What repeat-and-select covers is the selected model alone; the tracking store holds every trial.
        store = guarantee_for(space, float(opts["eps"]), int(n), validation, trials=k_run)
        rep["tracking_store"] = {**store.to_dict(), "statement": (
            f"the whole tracking store (MLflow runs, every trial's checkpoint, samples and metrics in the sweep's "
            f"storage): (ε = {store.eps:.3f}, δ = {store.delta:g})-DP by composition of all {k_run} trials run and "
            f"the validation generator. Share only the selected trial's artifacts to release at the repeat-and-select "
            f"figure above.")}
    done = sum(r.get("status") == "DONE" for r in rows)
    if selection and done < int(opts["trials"]):
        rep["incomplete"] = (f"only {done} of the K = {opts['trials']} drawn trials finished: repeat-and-select assumes "
                             f"every drawn run finishes and the best of all K is released. Do not release yet: "
                             f"`dpsearch sweep --resume {opts['name']} --retry-errored`.")
    return rep


def format_report(rep: dict) -> str:
    lines = [f"privacy report of sweep {rep['sweep']}", "per trial (each by its own accountant):"]
    for t in rep["trials"]:
        if t.get("eps") is None:
            lines.append(f"  {t['trial']}: {t['status']}, no privacy record (it did not finish; it is "
                         f"still counted in the released model's bound)")
            continue
        lines.append(f"  {t['trial']}: (ε = {t['eps']:.3f}, δ = {t['delta']:g}) {str(t['accountant']).upper()}, "
                     f"σ = {t['sigma']:.4f}, q = {t['q']:.5f}, steps = {t['steps']}, C = {t['clip']:.3g}, "
                     f"B = {t['batch']}, layers {t['layers']}")
    v = rep["validation"]
    if v:
        lines.append(f"validation generator: (ε = {v['eps']:.3f}, δ = {v['delta']:g}) {v['accountant'].upper()}, "
                     f"σ = {v['sigma']:.4f}, q = {v['q']:.5f}, steps = {v['steps']}, layers {v['layers']}")
    g = rep["released"]
    lines.append(f"one trial at the worst mechanism the space allows: (ε = {g['trial_eps_worst']:.3f}, "
                 f"δ = {g['delta']:g}) by {g['accountant']}")
    lines.append(rep["statement"])
    if rep.get("tracking_store"):
        lines.append(rep["tracking_store"]["statement"])
    if rep.get("incomplete"):
        lines.append("WARNING: " + rep["incomplete"])
    return "\n".join(lines)


def reference_mechanism(space, eps: float, n: int) -> Mechanism:
    """The validation generator's mechanism (the space's reference configuration at ε)."""
    delta = space.delta if space.delta is not None else default_delta(n)
    q, steps = poisson_plan(n, space.reference.batch, space.reference.epochs)
    return Mechanism(calibrate_sigma(eps, delta, q, steps, space.accountant), q, steps)


def solve_per_trial_eps(space, n: int, eps_total: float, *, trials: Optional[int] = None,
                        selection: Optional[str] = None, mean_trials: Optional[float] = None,
                        rel_tol: float = 0.01) -> tuple[float, SearchGuarantee]:
    """The largest per-trial ε (the validation generator gets the same ε) whose released-model
    guarantee is ≤ eps_total. Bisection on log ε: the bound is monotone in the per-trial ε."""
    import math

    def total(e: float) -> SearchGuarantee:
        return guarantee_for(space, e, n, reference_mechanism(space, e, n), trials=trials, selection=selection,
                             mean_trials=mean_trials)

    if not (math.isfinite(eps_total) and eps_total > 0):
        raise ConfigError(f"--eps-total must be a positive number, got {eps_total}")
    lo, hi = eps_total / 100, eps_total
    try:
        g_lo = total(lo)
    except ValueError as e:  # Opacus finds no σ for so small an ε
        raise ConfigError(f"--eps-total {eps_total:g} cannot be met: it needs a per-trial ε below {lo:.3g}, where "
                          f"the accountant finds no noise level ({e})") from None
    if g_lo.eps > eps_total:
        raise ConfigError(f"--eps-total {eps_total:g} cannot be met: even with per-trial ε = {lo:.3g} the released model "
                          f"costs ε = {g_lo.eps:.3f} (δ = {g_lo.delta:g}); the number of trials and δ set a floor. "
                          f"Use fewer trials, a smaller --mean-trials, or a larger total")
    best = (lo, g_lo)
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        g = total(mid)
        if g.eps <= eps_total:
            lo, best = mid, (mid, g)
        else:
            hi = mid
    return best
