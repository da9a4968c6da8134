"""Remembered answers of the per-trial ε search (report.solve_per_trial_eps), so a sweep does not bisect again.

The search evaluates the whole space's guarantee about ten times (≈ 85 s for the shipped space on 2 cores) and
gives the same answer every time for the same public plan. Only the answer's *search* is reused: a remembered
per-trial ε is checked by the accountant on every use (one evaluation of the guarantee), and thrown away when
it no longer meets the total. So a stale or tampered entry can cost utility, never privacy.

Two places, read in order: the entries that ship with the package (`dpsearch/shipped/solves.json`, made with
`python -m dpsearch.search.shipped_solves`, for the shipped spaces at common ε) and the user's cache
(`$DPSEARCH_HOME/solves.json`), to which every new answer is added. Callers use it only where N is public (a
space that declares n_public): the plan pins N (δ = 1/(N ln N), the steps). A key is built from public numbers only:
the grid's (q, steps) cells, the accountant, δ, the total, the number of trials or the selection rule, the
validation generator's plan and the tolerance. Not the accounting libraries' versions: the check on every use
is what keeps a remembered answer sound under a newer accountant (one that finds it over the total throws it
away and searches again; one that finds it a little under leaves at most the search's 1% tolerance unused).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parents[1] / "shipped" / "solves.json"
FILE = "solves.json"
FORMAT = 1  # raise it when the search itself changes (its tolerance rule, the composition it solves)


def key(**plan) -> str:
    """A digest of the plan (public numbers only)."""
    body = json.dumps(plan | {"format": FORMAT}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _user_file() -> Path:
    from dpsearch.paths import home

    return home() / FILE


def _read(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or unreadable: the search runs (the cache is only a speed-up)
    return entries if isinstance(entries, dict) else {}


def candidates(k: str) -> list[float]:
    """The remembered answers for this key, shipped first: each still has to pass the accountant's check."""
    found = []
    for path in (SHIPPED, _user_file()):
        entry = _read(path).get(k)
        v = entry.get("per_trial_eps") if isinstance(entry, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            found.append(float(v))
    return found


def checked(k: str, eps_total: float, total: Callable[[float], Any]) -> Optional[tuple[float, Any]]:
    """The first remembered answer whose guarantee, computed again by `total` (the search's own function),
    is ≤ eps_total, with that guarantee; None: the search must run. Only the search is skipped, never the check."""
    from dpsearch.config import ConfigError

    for remembered in candidates(k):
        try:
            g = total(remembered) if remembered <= eps_total else None
        except (ConfigError, ValueError):  # no σ for it: an answer no search would have given
            g = None
        if g is not None and g.eps <= eps_total:
            log.info("per-trial ε %.4f: a remembered answer for this plan, checked (ε = %.3f by %s)", remembered,
                     g.eps, g.accountant)
            return remembered, g
        log.info("remembered per-trial ε %.4g does not pass the check for ε = %g: not used", remembered, eps_total)
    return None


def store(k: str, per_trial_eps: float, plan: dict, path: Optional[Path] = None) -> None:
    """Adds an answer."""
    add_entry(path or _user_file(), k, {"per_trial_eps": per_trial_eps, "plan": plan}, "the per-trial ε")


def add_entry(path: Path, k: str, entry: dict, what: str, keep: Optional[int] = None) -> None:
    """Adds one entry to a JSON memo (atomic replace: concurrent writers lose an entry at worst, never corrupt the
    file); with `keep`, only the newest `keep` entries stay."""
    entries = _read(path)
    entries.pop(k, None)
    entries[k] = entry
    if keep is not None and len(entries) > keep:
        entries = dict(list(entries.items())[-keep:])
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: the run goes on, it only searches again next time
        log.warning("could not remember %s in %s: %s", what, path, e)
