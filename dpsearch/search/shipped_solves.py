"""Makes the per-trial ε answers that ship with the package (dpsearch/shipped/solves.json), so a fresh
`dpsearch sweep --eps E` of a shipped space checks one answer instead of searching for it (≈ 85 s on 2 cores).

`python -m dpsearch.search.shipped_solves [--eps 1 5 10] [--spaces mnist] [--trials 8]`: each answer is searched
afresh (no cache read) from the space's public N, exactly as a new disjoint-slice sweep plans it, and added; so is
the σ of each grid cell at that per-trial ε (the trials) and at the total (the final run on the final slice, same q
and steps), to dpsearch/shipped/sigmas.json (privacy/sigma_memo.py), so the trials and the final run do not
calibrate either. `--sigmas-only` adds the σ of the answers already shipped without searching again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dpsearch.privacy import solve_cache
from dpsearch.privacy.report import solve_per_trial_eps, solve_plan
from dpsearch.search.design import slice_solve_args
from dpsearch.search.options import SweepOptions
from dpsearch.space import load_space

log = logging.getLogger(__name__)


def ship(eps: list[float], spaces: list[str], trials: int, sigmas_only: bool = False) -> Path:
    for name in spaces:
        space = load_space(name)
        for e in eps:
            args = slice_solve_args(space, e, trials)
            plan = solve_plan(space, **args)
            k = solve_cache.key(**plan)
            if sigmas_only:
                per = solve_cache.candidates(k)[0]  # shipped (or remembered): the one a sweep would check
            else:
                log.info("solving %s at ε = %g on a tuning slice of %d planned records", name, e, args["n"])
                per, g = solve_per_trial_eps(space, cache=False, **args)
                solve_cache.store(k, per, plan, path=solve_cache.SHIPPED)
                log.info("  per-trial ε = %.4f (total ε = %.3f by %s)", per, g.eps, g.accountant)
            ship_sigmas(plan, [per, e])
    return solve_cache.SHIPPED


def ship_sigmas(plan: dict, eps: list[float]) -> None:
    """σ of every (q, steps) cell of a shipped plan at each ε, searched afresh (the memo neither read nor written)."""
    from dpsearch.privacy import sigma_memo
    from dpsearch.privacy.accounting import _search_sigma

    for e in eps:
        for q, steps in plan["cells"]:
            sigma = _search_sigma(e, plan["delta"], q, steps, plan["accountant"], None)
            k = sigma_memo.key(e, plan["delta"], q, steps, plan["accountant"], None)
            sigma_memo.remember(k, sigma, path=sigma_memo.SHIPPED)
            log.info("  σ = %.4f at ε = %.4f, q = %.4g, %d steps", sigma, e, q, steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eps", type=float, nargs="+", default=[1.0, 5.0, 10.0])
    p.add_argument("--spaces", nargs="+", default=["mnist"])
    p.add_argument("--trials", type=int, default=SweepOptions.__dataclass_fields__["trials"].default)
    p.add_argument("--sigmas-only", action="store_true", help="ship the σ of the answers already shipped")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ship(a.eps, a.spaces, a.trials, a.sigmas_only))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
