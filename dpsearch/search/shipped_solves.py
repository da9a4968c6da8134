"""Makes the per-trial ε answers that ship with the package (dpsearch/shipped/solves.json), so a fresh
`dpsearch sweep --eps E` of a shipped space checks one answer instead of searching for it (≈ 85 s on 2 cores).

`python -m dpsearch.search.shipped_solves [--eps 1 5 10] [--spaces mnist] [--trials 8]`: each answer is searched
afresh (no cache read) from the space's public N, exactly as a new disjoint-slice sweep plans it, and added.
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


def ship(eps: list[float], spaces: list[str], trials: int) -> Path:
    for name in spaces:
        space = load_space(name)
        for e in eps:
            args = slice_solve_args(space, e, trials)
            log.info("solving %s at ε = %g on a tuning slice of %d planned records", name, e, args["n"])
            per, g = solve_per_trial_eps(space, cache=False, **args)
            plan = solve_plan(space, **args)
            solve_cache.store(solve_cache.key(**plan), per, plan, path=solve_cache.SHIPPED)
            log.info("  per-trial ε = %.4f (total ε = %.3f by %s)", per, g.eps, g.accountant)
    return solve_cache.SHIPPED


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eps", type=float, nargs="+", default=[1.0, 5.0, 10.0])
    p.add_argument("--spaces", nargs="+", default=["mnist"])
    p.add_argument("--trials", type=int, default=SweepOptions.__dataclass_fields__["trials"].default)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ship(a.eps, a.spaces, a.trials))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
