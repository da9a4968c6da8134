"""The per-trial ε search's root finder: the largest ε whose composed guarantee meets the total."""

from __future__ import annotations

import math
from typing import Callable, TYPE_CHECKING

from dpsearch.config import ConfigError

if TYPE_CHECKING:
    from dpsearch.privacy.search_cost import SearchGuarantee


def largest_within(total: Callable[[float], "SearchGuarantee"], eps_total: float, lo: float, g_lo: "SearchGuarantee",
                   hi: float, rel_tol: float) -> tuple[float, "SearchGuarantee"]:
    """The largest per-trial ε in [lo, hi] (to rel_tol) whose guarantee is ≤ eps_total, lo known to meet it.

    Each evaluation calibrates σ for every cell of the space (seconds of accountant work), so the root of
    log(total(ε)/eps_total) in log ε is bracketed by regula falsi with the Illinois rule (superlinear on this
    smooth, monotone curve) instead of bisection. Written here rather than with scipy's brentq because the search
    must stop as soon as the bracket is rel_tol wide on both sides, and brentq can neither stop early nor be told to
    probe just past a near-root point: each interpolated point is kept at least half the tolerance inside the
    bracket, so a point landing just below the root is followed by one just above it. Only evaluated points are
    returned: the best that met the total, with one that does not within rel_tol above it."""
    try:
        g_hi = total(hi)
    except (ConfigError, ValueError):  # the whole budget per trial may have no σ an accountant confirms: not a root
        g_hi = None
    if g_hi is not None and g_hi.eps <= eps_total:
        return hi, g_hi
    tol = math.log1p(rel_tol)
    a, fa, best = math.log(lo), math.log(g_lo.eps / eps_total), (lo, g_lo)
    b, fb = math.log(hi), None if g_hi is None else math.log(g_hi.eps / eps_total)
    side = 0
    while b - a > tol:
        # fa ≤ 0 < fb, halved or not: never a division by zero; a bisection step until the upper end has a value
        x = (a + b) / 2 if fb is None else b - fb * (b - a) / (fb - fa)
        x = min(max(x, a + tol / 2), b - tol / 2)
        e = math.exp(x)
        g = total(e)
        fx = math.log(g.eps / eps_total)
        if fx <= 0:
            a, fa, best = x, fx, (e, g)
            if side == -1:  # the same end moved twice: halve the other's weight (Illinois)
                fb /= 2
            side = -1
        else:
            b, fb = x, fx
            if side == 1:
                fa /= 2
            side = 1
    return best
