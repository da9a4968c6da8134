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
                  delta: Optional[float] = None, validation_runs: int = 1) -> SearchGuarantee:
    delta = _delta(space, n, delta)
    return search_guarantee(space_grid(space, eps, n, batch_scale, delta), delta, validation, trials=trials,
                            selection=selection, mean_trials=mean_trials, validation_runs=validation_runs)


def check_recorded(rows: list[dict], grid: list[Mechanism]) -> None:
    """Every finished trial's recorded mechanism is one the bound covers: its (q, steps) is a cell of the grid
    and its recorded σ is at least that cell's calibrated σ. The report recalibrates σ from the plan; a trial
    that ran with less noise (another version, a bug) would otherwise be covered by a bound it breaks."""
    for r in rows:
        _no_warmup(r)
        if r.get("sigma") is None:
            continue
        cells = [m for m in grid if m.steps == int(r["steps"]) and abs(m.q - float(r["q"])) <= 1e-12]
        if not cells:
            raise ConfigError(f"trial {r.get('trial')} ran q = {r['q']}, {r['steps']} steps, which no cell of the search "
                              f"space's privacy grid has: the sweep's bound does not cover it. Report it as a bug; do not "
                              f"release this sweep")
        if float(r["sigma"]) < max(m.sigma for m in cells) * (1 - 1e-9):
            raise ConfigError(f"trial {r.get('trial')} ran with σ = {r['sigma']} below the planned σ = "
                              f"{max(m.sigma for m in cells)} for its (q, steps): the sweep's bound does not cover it. "
                              f"Report it as a bug; do not release this sweep")


def _no_warmup(record: Optional[dict]) -> None:
    """A sweep composes its runs as (σ, q, steps) alone; a run with a class-mean warm-up release is not that."""
    if record and record.get("warmup_sigma"):
        raise ConfigError("a sweep's run recorded a class-mean warm-up, which the sweep's privacy composition does not "
                          "include; warm-ups run in `dpsearch run` only. Do not release this sweep")


def _runs(attempts: Optional[dict], stage: str) -> int:
    """How often a once-per-sweep stage ran (at least the one planned)."""
    return max(1, int((attempts or {}).get(stage, 1)))


def stored_sweep_report(saved: dict, rows: list[dict], vp: Optional[dict], started: list[str],
                        final: Optional[dict] = None, attempts: Optional[dict] = None) -> dict:
    """The privacy report from what a sweep stored (sweep_store.py reads it): sweep.json's content, the
    summary rows, the validation generator's record, one id per trial attempt ever started, the final
    stage's result and how often each once-per-sweep stage started (attempts.json).

    Its σ come from the memo the sweep's runs used (privacy/sigma_memo.py), on where the sweep's N was public: a
    fresh search under other library versions can land a little above a shipped σ the runs used (and the accountant
    accepted), and check_recorded would then refuse a sweep its own report passed."""
    from dpsearch.privacy.sigma_memo import allowed
    from dpsearch.space import SearchSpace

    with allowed(bool(saved["space"].get("n_public"))):
        return _stored_sweep_report(saved, SearchSpace(**saved["space"]), rows, vp, started, final, attempts)


def _stored_sweep_report(saved: dict, space, rows: list[dict], vp: Optional[dict], started: list[str],
                         final: Optional[dict], attempts: Optional[dict]) -> dict:
    opts = saved["options"]
    if saved.get("design") == "slices":
        return _slices_report(saved, space, rows, vp, started, final, attempts)
    n = saved.get("n_private") or (vp or {}).get("n")
    if not n:
        raise ConfigError(f"sweep {saved['options'].get('name')} records no private-set size; it stopped before its "
                          f"first DP run")
    # the sweep's one δ; sweeps before it was recorded ran every trial at its own default, which the rows carry
    deltas = {float(r["delta"]) for r in rows if r.get("delta") is not None}
    delta = saved.get("delta") or (deltas.pop() if len(deltas) == 1 else None)
    validation = Mechanism(vp["sigma"], vp["q"], vp["steps"]) if vp else None
    v_runs = _runs(attempts, "validation")
    selection = opts.get("private_selection")
    # Every trial attempt ever started counts, restored or not, errored included: each one touched the private data.
    k_run = max(int(opts["trials"]), len(rows), len(started))
    check_recorded(rows, space_grid(space, float(opts["eps"]), int(n), delta=delta))
    g = guarantee_for(space, float(opts["eps"]), int(n), validation, trials=None if selection else k_run,
                      selection=selection, mean_trials=opts.get("mean_trials"), validation_runs=v_runs, delta=delta)
    rep = {"sweep": opts["name"], "design": saved.get("design", "per-trial"), "validation": vp,
           "validation_runs": v_runs, "released": g.to_dict(), "statement": coverage_statement(g)}
    if not selection:
        return {**rep, "trials": _trial_rows(rows), "trials_started": len(started)}
    # Repeat-and-select holds only while K stays hidden: the release part of this report carries no K, no trial
    # ids, statuses or rows. All of that lives in the tracking store's part, whose figure is the composition of
    # every trial attempt the store holds.
    store = guarantee_for(space, float(opts["eps"]), int(n), validation, trials=k_run, validation_runs=v_runs,
                          delta=delta)
    rep["tracking_store"] = {**store.to_dict(), "trials_rows": _trial_rows(rows), "trials_started": len(started),
                             "statement": (
        f"the whole tracking store (MLflow runs, every trial's checkpoint, samples and metrics in the sweep's "
        f"storage): (ε = {store.eps:.3f}, δ = {store.delta:g})-DP by composition of all {k_run} trial runs and "
        f"the validation generator. It reveals K: never publish anything from it beside the repeat-and-select "
        f"figure; share only the sweep's final/ release to release at that figure.")}
    done = sum(r.get("status") == "DONE" for r in rows)
    if done < int(opts["trials"]):
        rep["tracking_store"]["incomplete"] = (
            f"only {done} of the K = {opts['trials']} drawn trials finished. Repeat-and-select releases the best of K "
            f"runs; a run that crashed counts as a run that returned nothing, which the bound covers only if the crash "
            f"did not depend on private data (e.g. a lost machine). Retrying it is refused (a repetition run twice).")
    return rep


def _trial_rows(rows: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in ("trial", "status", "eps", "delta", "sigma", "q", "steps", "clip", "batch", "epochs",
                                   "layers", "accountant")} for r in rows]


def _slices_report(saved: dict, space, rows: list[dict], vp: Optional[dict], started: list[str],
                   final: Optional[dict], attempts: Optional[dict] = None) -> dict:
    """Disjoint slices (privacy/slices.py): each part's (ε, δ) on its own records; the released model costs
    the largest. Before the final run, its part is the planned one: calibrated to the total by construction.
    A once-per-sweep stage that started more than once (attempts.json) is composed over its runs."""
    from dpsearch.privacy.slices import PartGuarantee, released_guarantee

    opts, sl, delta = saved["options"], saved["slices"], float(saved["delta"])
    if opts.get("private_selection"):
        raise ConfigError(f"sweep {opts['name']} ran private selection on disjoint slices, which dpsearch now refuses: "
                          f"its tuning slice's tracking store is the composition of every trial, not the planned total")
    sizes = sl.get("planned") or sl["sizes"]  # planned public sizes (sweeps before them stored exact sizes)
    total = float(opts["eps_total"])
    k_run = max(int(opts["trials"]), len(rows), len(started))
    n_tuning, scale = int(sizes["tuning"]), float(sl["trial_batch_scale"])
    check_recorded(rows, space_grid(space, float(opts["eps"]), n_tuning, scale, delta))
    tuning = guarantee_for(space, float(opts["eps"]), n_tuning, None, trials=k_run, batch_scale=scale, delta=delta)
    parts = [PartGuarantee("tuning", tuning.eps, delta, tuning.accountant)]
    count = sl.get("count")
    if count:  # one count per trial attempt started and per free candidate of every free-choice run
        from dpsearch.privacy.noisy_count import count_epsilon

        queries = k_run + _runs(attempts, "free") * (int(count["queries"]) - int(opts["trials"]))
        parts.append(PartGuarantee("validation", count_epsilon(float(count["sigma"]), queries, delta), delta, "pld"))
        scoring = (f"{queries} Gaussian counts (σ = {float(count['sigma']):.2f}) scoring the trials and the free "
                   f"candidates on its real records")
    else:
        v_runs = _runs(attempts, "validation")
        if vp and v_runs > 1:
            eps_v = Mechanism(vp["sigma"], vp["q"], vp["steps"]).pld_eps(v_runs, delta)
            parts.append(PartGuarantee("validation", eps_v, delta, f"pld, {v_runs} runs composed"))
        else:
            parts.append(PartGuarantee("validation", vp["eps"], vp["delta"], vp["accountant"]) if vp else
                         PartGuarantee("validation", total, delta, "planned (not run yet)"))
        scoring = "the validation generator" + (f" ({v_runs} runs: it was made again after a crash)" if v_runs > 1 else "")
    fp, final_runs = (final or {}).get("privacy"), _runs(attempts, "final")
    parts.append(_final_part(space, fp, final_runs, total, int(sizes["final"]), delta))
    trained = "once" if final_runs == 1 else f"{final_runs} times (runs composed)"
    start = f" from the {fp['start']}" if fp and fp.get("start") else ""
    g, over = released_guarantee(parts, total)
    released = {"eps": g.eps, "delta": g.delta, "mode": "slices", "accountant": g.accountant,
                "trial_eps_worst": tuning.trial_eps_worst, "trials": k_run, "parts": [vars(p) for p in parts],
                "tuning": tuning.to_dict(), "slices": {k: v for k, v in sl.items() if k != "sizes"}}
    statement = "\n".join([
        f"released model: (ε = {g.eps:.3f}, δ = {g.delta:g})-DP by parallel composition over disjoint slices of the "
        f"private records (each record is in exactly one slice, by a public hash of that record alone):",
        f"  tuning slice (planned {sizes['tuning']} records): {k_run} trials composed, (ε = {tuning.eps:.3f}) by "
        f"{tuning.accountant};",
        f"  validation slice (planned {sizes['validation']}): {scoring}, (ε = {parts[1].eps:.3f}) by {parts[1].accountant};",
        f"  final slice (planned {sizes['final']}): the selected configuration trained {trained}{start}, "
        f"(ε = {parts[2].eps:.3f}) by {parts[2].accountant}.",
        "covered: the released model, its synthetic data set, every trial's outputs, the objective and the choices made "
        "on it (configuration, guidance, solver steps). The whole tracking store is covered by the same figure.",
        "noise and Poisson sampling of every DP run come from fresh OS entropy (never a recorded seed); not covered: "
        "the oracle metrics (computed on the real test split) are not DP and not counted.",
        "assumes add/remove adjacency of one record; every q, batch and count denominator is planned from the public N "
        "and the rule's fractions, never from a slice's exact size (docs/privacy.md, \"Disjoint-slice search\")."])
    rep = {"sweep": opts["name"], "design": "slices", "trials": _trial_rows(rows), "trials_started": len(started),
           "validation": vp, "final": fp, "released": released, "statement": statement}
    if over:
        rep["over_total"] = over
    return rep


def _final_part(space, fp: Optional[dict], runs: int, total: float, n_final: int, delta: float):
    """The final slice's part: the final run's own record, composed over its runs when it was trained again
    after a crash; before it has run, the planned total (or, for a rerun, the space's worst mechanism at the
    total composed over the runs)."""
    from dpsearch.privacy.slices import PartGuarantee

    _no_warmup(fp)
    if fp and runs == 1:
        return PartGuarantee("final", fp["eps"], fp["delta"], fp["accountant"])
    if fp:
        return PartGuarantee("final", Mechanism(fp["sigma"], fp["q"], fp["steps"]).pld_eps(runs, delta), delta,
                             f"pld, {runs} runs composed")
    if runs == 1:
        return PartGuarantee("final", total, delta, "planned (not run yet)")
    g = guarantee_for(space, total, n_final, None, trials=runs, delta=delta)
    return PartGuarantee("final", g.eps, delta, f"planned, {runs} runs composed ({g.accountant})")


def validation_line(v: dict) -> str:
    """What scored the trials, with its privacy: the validation generator, or the counting objective."""
    if v.get("objective") == "count":
        return (f"objective: noisy counts on a slice of planned {v['n']} held-out private records, {v['queries']} planned "
                f"(σ = {v['sigma']:.2f}), (ε = {v['eps']:.3f}, δ = {v['delta']:g}) PLD")
    return (f"validation generator: (ε = {v['eps']:.3f}, δ = {v['delta']:g}) {v['accountant'].upper()}, "
            f"σ = {v['sigma']:.4f}, q = {v['q']:.5f}, steps = {v['steps']}, layers {v['layers']}")


def _trial_lines(trials: list[dict]) -> list[str]:
    lines = ["per trial (each by its own accountant):"]
    for t in trials:
        if t.get("eps") is None:
            lines.append(f"  {t['trial']}: {t['status']}, no privacy record (it did not finish; it is "
                         f"still counted in the bound)")
            continue
        lines.append(f"  {t['trial']}: (ε = {t['eps']:.3f}, δ = {t['delta']:g}) {str(t['accountant']).upper()}, "
                     f"σ = {t['sigma']:.4f}, q = {t['q']:.5f}, steps = {t['steps']}, C = {t['clip']:.3g}, "
                     f"B = {t['batch']}, layers {t['layers']}")
    return lines


def format_report(rep: dict, tracking_store: bool = False) -> str:
    """The report as text. Under private selection only the release part (no K, no trial ids or rows) unless
    tracking_store: then only the tracking store's part, which is not to be published beside the release."""
    store = rep.get("tracking_store")
    if store and tracking_store:
        lines = [f"TRACKING STORE of sweep {rep['sweep']} (not the release: it reveals K; keep it private)",
                 *_trial_lines(store["trials_rows"]), store["statement"]]
        if store.get("incomplete"):
            lines.append("WARNING: " + store["incomplete"])
        return "\n".join(lines)
    lines = [f"privacy report of sweep {rep['sweep']}"]
    if not store:
        lines += _trial_lines(rep["trials"])
    v = rep["validation"]
    if v:
        lines.append(validation_line(v) + (f", {rep['validation_runs']} runs composed" if rep.get("validation_runs", 1) > 1
                                          else ""))
    f = rep.get("final")
    if f:
        lines.append(f"final run: (ε = {f['eps']:.3f}, δ = {f['delta']:g}) {f['accountant'].upper()}, σ = {f['sigma']:.4f}, "
                     f"q = {f['q']:.5f}, steps = {f['steps']}, layers {f['layers']}")
    g = rep["released"]
    lines.append(f"one trial at the worst mechanism the space allows: (ε = {g['trial_eps_worst']:.3f}, "
                 f"δ = {g['delta']:g}) by RDP")
    lines.append(rep["statement"])
    if store:
        lines.append("the tracking store's own figure and the per-trial rows: `dpsearch privacy report NAME "
                     "--tracking-store` (keep them apart from this release)")
    if rep.get("over_total"):
        lines.append("WARNING: " + rep["over_total"])
    return "\n".join(lines)


def reference_mechanism(space, eps: float, n: int, batch_scale: float = 1.0, delta: Optional[float] = None) -> Mechanism:
    """The validation generator's mechanism (the space's reference configuration at ε)."""
    from dpsearch.space import scaled_batch

    delta = _delta(space, n, delta)
    q, steps = poisson_plan(n, scaled_batch(space.reference.batch, batch_scale), space.reference.epochs)
    return Mechanism(calibrate_sigma(eps, delta, q, steps, space.accountant), q, steps)


def solve_plan(space, n: int, eps_total: float, *, trials: Optional[int] = None, selection: Optional[str] = None,
               mean_trials: Optional[float] = None, rel_tol: float = 0.01, with_validation: bool = True,
               batch_scale: float = 1.0, delta: Optional[float] = None) -> dict:
    """What solve_per_trial_eps's answer depends on, in public numbers (the solve cache's key)."""
    from dpsearch.space import scaled_batch

    cells = sorted({poisson_plan(n, scaled_batch(b, batch_scale), e)
                    for b in space.params.batch.values() for e in space.params.epochs.values()})
    val = (list(poisson_plan(n, scaled_batch(space.reference.batch, 1.0), space.reference.epochs)) if with_validation
           else None)  # as reference_mechanism plans it
    return {"cells": [list(c) for c in cells], "accountant": space.accountant, "delta": _delta(space, n, delta),
            "eps_total": float(eps_total), "trials": trials, "selection": selection, "mean_trials": mean_trials,
            "rel_tol": rel_tol, "validation": val}


def solve_per_trial_eps(space, n: int, eps_total: float, *, trials: Optional[int] = None,
                        selection: Optional[str] = None, mean_trials: Optional[float] = None,
                        rel_tol: float = 0.01, with_validation: bool = True, batch_scale: float = 1.0,
                        delta: Optional[float] = None, cache: bool = True) -> tuple[float, SearchGuarantee]:
    """The largest per-trial ε whose guarantee is ≤ eps_total. With the validation generator (the composed
    design) it gets the same ε and is composed in; on a disjoint tuning slice it is not (it has its own
    slice). A bracketed root search on log ε (root_search.py): the bound is monotone in the per-trial ε.

    cache: reuse a remembered answer for the same public plan (privacy/solve_cache.py), checked here by the
    accountant before it is used, and remember a new one."""
    import math

    from dpsearch.privacy import solve_cache
    from dpsearch.privacy.root_search import largest_within

    def total(e: float) -> SearchGuarantee:
        val = reference_mechanism(space, e, n, delta=delta) if with_validation else None
        return guarantee_for(space, e, n, val, trials=trials, selection=selection, mean_trials=mean_trials,
                             batch_scale=batch_scale, delta=delta)

    if not (math.isfinite(eps_total) and eps_total > 0):
        raise ConfigError(f"--eps (the released ε) must be a positive number, got {eps_total}")
    plan = solve_plan(space, n, eps_total, trials=trials, selection=selection, mean_trials=mean_trials,
                      rel_tol=rel_tol, with_validation=with_validation, batch_scale=batch_scale, delta=delta)
    key = solve_cache.key(**plan)
    hit = solve_cache.checked(key, eps_total, total) if cache else None
    if hit is not None:
        return hit
    # K runs at total/(2K) each compose to well under the total by any accountant; far smaller starts make
    # σ calibration fail (σ in the hundreds) before the search begins.
    k = trials if trials is not None else 3 * (mean_trials or 1)
    lo, hi = eps_total / (2 * k + (2 if with_validation else 0)), eps_total
    try:
        g_lo = total(lo)
    except ValueError as e:  # Opacus finds no σ for so small an ε
        raise ConfigError(f"--eps {eps_total:g} cannot be met: it needs a per-trial ε below {lo:.3g}, where "
                          f"the accountant finds no noise level ({e})") from None
    if g_lo.eps > eps_total:
        raise ConfigError(f"--eps {eps_total:g} cannot be met: even with per-trial ε = {lo:.3g} the released model "
                          f"costs ε = {g_lo.eps:.3f} (δ = {g_lo.delta:g}); the number of trials and δ set a floor. "
                          f"Use fewer trials, a smaller --mean-trials, or a larger total")
    best = largest_within(total, eps_total, lo, g_lo, hi, rel_tol)
    if cache:
        solve_cache.store(key, best[0], plan)
    return best
