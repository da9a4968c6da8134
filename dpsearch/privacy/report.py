"""The privacy report of a sweep: every trial's (ε, δ), the validation generator's, and the released model's.

Computation only: sweep_store.py reads what a sweep stored and hands it here, so the report works on any
machine that has the sweep's storage.
"""

from __future__ import annotations

from typing import Optional

from dpsearch.config import ConfigError, default_delta
from dpsearch.privacy.accounting import calibrate_sigma, poisson_plan
from dpsearch.privacy.search_cost import Mechanism, SearchGuarantee, coverage_statement, search_guarantee


def _delta(space, n: int, delta: Optional[float] = None) -> float:
    """The given δ, else the space's, else the default for N (docs/privacy.md)."""
    return delta if delta is not None else space.delta if space.delta is not None else default_delta(n)


def space_grid(space, eps: float, n: int, batch_scale: float = 1.0, delta: Optional[float] = None) -> list[Mechanism]:
    """Every mechanism a trial of this space can run: one per (batch, epochs) value, σ calibrated.

    Clip norm, learning rate and layer range do not change the mechanism (σ is relative to C).
    batch and epochs are whole-number parameters with finite value lists (space.py enforces it).
    batch_scale: trials on a tuning slice run batch × scale (space.scaled_batch), the same q and steps as
    the final run on its slice.
    """
    from dpsearch.space import scaled_batch

    delta = _delta(space, n, delta)
    grid = []
    for b in space.params.batch.values():
        for e in space.params.epochs.values():
            q, steps = poisson_plan(n, scaled_batch(b, batch_scale), e)
            grid.append(Mechanism(calibrate_sigma(eps, delta, q, steps, space.accountant), q, steps))
    return grid


def guarantee_for(space, eps: float, n: int, validation: Optional[Mechanism], *, trials: Optional[int] = None,
                  selection: Optional[str] = None, mean_trials: Optional[float] = None, batch_scale: float = 1.0,
                  delta: Optional[float] = None) -> SearchGuarantee:
    delta = _delta(space, n, delta)
    return search_guarantee(space_grid(space, eps, n, batch_scale, delta), delta, validation, trials=trials,
                            selection=selection, mean_trials=mean_trials)


def stored_sweep_report(saved: dict, rows: list[dict], vp: Optional[dict], started: list[str],
                        final: Optional[dict] = None) -> dict:
    """The privacy report from what a sweep stored (sweep_store.py reads it): sweep.json's content, the
    summary rows, the validation generator's record, the ids of every trial ever started and the final
    stage's result."""
    from dpsearch.space import SearchSpace

    opts, space = saved["options"], SearchSpace(**saved["space"])
    if saved.get("design") == "slices":
        return _slices_report(saved, space, rows, vp, started, final)
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
    rep = {"sweep": opts["name"], "design": saved.get("design", "per-trial"), "trials": _trial_rows(rows), "trials_started": len(started), "validation": vp,
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


def _trial_rows(rows: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in ("trial", "status", "eps", "delta", "sigma", "q", "steps", "clip", "batch", "epochs",
                                   "layers", "accountant")} for r in rows]


def _slices_report(saved: dict, space, rows: list[dict], vp: Optional[dict], started: list[str],
                   final: Optional[dict]) -> dict:
    """Disjoint slices (privacy/slices.py): each part's (ε, δ) on its own records; the released model costs
    the largest. Before the final run, its part is the planned one: calibrated to the total by construction."""
    from dpsearch.privacy.slices import PartGuarantee, released_guarantee

    opts, sl, delta = saved["options"], saved["slices"], float(saved["delta"])
    total, selection = float(opts["eps_total"]), opts.get("private_selection")
    k_run = max(int(opts["trials"]), len(rows), len(started))
    tuning = guarantee_for(space, float(opts["eps"]), int(sl["sizes"]["tuning"]), None,
                           trials=None if selection else k_run, selection=selection,
                           mean_trials=opts.get("mean_trials"), batch_scale=float(sl["trial_batch_scale"]), delta=delta)
    parts = [PartGuarantee("tuning", tuning.eps, delta, tuning.accountant)]
    count = sl.get("count")
    if count:  # one count per trial started (restarted ones too) and per planned free candidate
        from dpsearch.privacy.noisy_count import count_epsilon

        queries = k_run + int(count["queries"]) - int(opts["trials"])
        parts.append(PartGuarantee("validation", count_epsilon(float(count["sigma"]), queries, delta), delta, "pld"))
        scoring = (f"{queries} Gaussian counts (σ = {float(count['sigma']):.2f}) scoring the trials and the free "
                   f"candidates on its real records")
    else:
        parts.append(PartGuarantee("validation", vp["eps"], vp["delta"], vp["accountant"]) if vp else
                     PartGuarantee("validation", total, delta, "planned (not run yet)"))
        scoring = "the validation generator"
    fp = (final or {}).get("privacy")
    parts.append(PartGuarantee("final", fp["eps"], fp["delta"], fp["accountant"]) if fp else
                 PartGuarantee("final", total, delta, "planned (not run yet)"))
    g, over = released_guarantee(parts, total)
    released = {"eps": g.eps, "delta": g.delta, "mode": "slices", "accountant": g.accountant,
                "trial_eps_worst": tuning.trial_eps_worst, "trials": k_run, "parts": [vars(p) for p in parts],
                "tuning": tuning.to_dict(), "slices": sl}
    sizes = sl["sizes"]
    statement = "\n".join([
        f"released model: (ε = {g.eps:.3f}, δ = {g.delta:g})-DP by parallel composition over disjoint slices of the "
        f"private records (each record is in exactly one slice, by a public hash of that record alone):",
        f"  tuning slice ({sizes['tuning']} records): {k_run} trials composed, (ε = {tuning.eps:.3f}) by {tuning.accountant};",
        f"  validation slice ({sizes['validation']}): {scoring}, (ε = {parts[1].eps:.3f}) by {parts[1].accountant};",
        f"  final slice ({sizes['final']}): the selected configuration trained once, (ε = {parts[2].eps:.3f}) by "
        f"{parts[2].accountant}.",
        "covered: the released model, its synthetic data set, every trial's outputs, the objective and the choices made "
        "on it (configuration, guidance, solver steps). The whole tracking store is covered by the same figure.",
        "noise and Poisson sampling of every DP run come from fresh OS entropy (never a recorded seed); not covered: "
        "the oracle metrics (computed on the real test split) are not DP and not counted.",
        "assumes add/remove adjacency of one record and slice sizes treated as public, as every DP-SGD run here "
        "does with N (docs/privacy.md, \"Disjoint-slice search\")."])
    rep = {"sweep": opts["name"], "design": "slices", "trials": _trial_rows(rows), "trials_started": len(started),
           "validation": vp, "final": fp, "released": released, "statement": statement}
    if over:
        rep["over_total"] = over
    return rep


def validation_line(v: dict) -> str:
    """What scored the trials, with its privacy: the validation generator, or the counting objective."""
    if v.get("objective") == "count":
        return (f"objective: noisy counts on {v['n']} held-out private records, {v['queries']} planned (σ = "
                f"{v['sigma']:.2f}), (ε = {v['eps']:.3f}, δ = {v['delta']:g}) PLD")
    return (f"validation generator: (ε = {v['eps']:.3f}, δ = {v['delta']:g}) {v['accountant'].upper()}, "
            f"σ = {v['sigma']:.4f}, q = {v['q']:.5f}, steps = {v['steps']}, layers {v['layers']}")


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
        lines.append(validation_line(v))
    f = rep.get("final")
    if f:
        lines.append(f"final run: (ε = {f['eps']:.3f}, δ = {f['delta']:g}) {f['accountant'].upper()}, σ = {f['sigma']:.4f}, "
                     f"q = {f['q']:.5f}, steps = {f['steps']}, layers {f['layers']}")
    g = rep["released"]
    lines.append(f"one trial at the worst mechanism the space allows: (ε = {g['trial_eps_worst']:.3f}, "
                 f"δ = {g['delta']:g}) by RDP")
    lines.append(rep["statement"])
    if rep.get("tracking_store"):
        lines.append(rep["tracking_store"]["statement"])
    if rep.get("over_total"):
        lines.append("WARNING: " + rep["over_total"])
    if rep.get("incomplete"):
        lines.append("WARNING: " + rep["incomplete"])
    return "\n".join(lines)


def reference_mechanism(space, eps: float, n: int, batch_scale: float = 1.0, delta: Optional[float] = None) -> Mechanism:
    """The validation generator's mechanism (the space's reference configuration at ε)."""
    from dpsearch.space import scaled_batch

    delta = _delta(space, n, delta)
    q, steps = poisson_plan(n, scaled_batch(space.reference.batch, batch_scale), space.reference.epochs)
    return Mechanism(calibrate_sigma(eps, delta, q, steps, space.accountant), q, steps)


def solve_per_trial_eps(space, n: int, eps_total: float, *, trials: Optional[int] = None,
                        selection: Optional[str] = None, mean_trials: Optional[float] = None,
                        rel_tol: float = 0.01, with_validation: bool = True, batch_scale: float = 1.0,
                        delta: Optional[float] = None) -> tuple[float, SearchGuarantee]:
    """The largest per-trial ε whose guarantee is ≤ eps_total. With the validation generator (the composed
    design) it gets the same ε and is composed in; on a disjoint tuning slice it is not (it has its own
    slice). Bisection on log ε: the bound is monotone in the per-trial ε."""
    import math

    def total(e: float) -> SearchGuarantee:
        val = reference_mechanism(space, e, n) if with_validation else None
        return guarantee_for(space, e, n, val, trials=trials, selection=selection, mean_trials=mean_trials,
                             batch_scale=batch_scale, delta=delta)

    if not (math.isfinite(eps_total) and eps_total > 0):
        raise ConfigError(f"--eps-total must be a positive number, got {eps_total}")
    # K runs at total/(2K) each compose to well under the total by any accountant; far smaller starts make
    # σ calibration fail (σ in the hundreds) before the bisection begins.
    k = trials if trials is not None else 3 * (mean_trials or 1)
    lo, hi = eps_total / (2 * k + (2 if with_validation else 0)), eps_total
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
