"""Remembered noise levels of `calibrate_sigma`, so a σ calibrated once is not searched for again.

Calibration searches σ with a dozen PLD and a few PRV evaluations (1.5–4.5 s on a 2-core CPU); a sweep asks for
the same σ in its plan (every grid cell, at each step of the per-trial ε search), in every trial and in its final
stage, and the next sweep asks again. Only the *search* is reused: a remembered σ is checked by the requested
accountant on every use (one evaluation), and thrown away when that accountant finds it over the target ε. So a
stale or tampered entry can cost utility (a σ larger than needed), never privacy.

Read from two places in order: the entries that ship with the package (`dpsearch/shipped/sigmas.json`, the grid
cells of the shipped spaces' shipped solves, made by `python -m dpsearch.search.shipped_solves`) and the user's
`$DPSEARCH_HOME/sigmas.json` (the newest KEEP entries), to which every new σ is added. A key is a digest of the mechanism's plan (ε, δ, q,
steps, accountant, warm-up σ_w). q and the steps follow from N, so, as for the solve cache, the memo is used only
where N is public: inside a sweep whose space declares `n_public` (`allowed`, which the sweep's Ray workers
inherit through the environment). Elsewhere calibration searches every time and writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator, Optional

from dpsearch.privacy.solve_cache import _read, add_entry

log = logging.getLogger(__name__)

FILE = "sigmas.json"
SHIPPED = Path(__file__).resolve().parents[1] / "shipped" / FILE
FORMAT = 1  # raise it when calibration itself changes (its tolerance, the accountants' roles)
KEEP = 4096


ENV = "DPSEARCH_SIGMA_MEMO"  # "1": N is public in this run, the memo may be read and written


def in_use() -> bool:
    return os.environ.get(ENV) == "1"


@contextlib.contextmanager
def allowed(n_is_public: bool) -> Iterator[None]:
    """The memo on (N public) or off inside the block, for this process and the Ray workers it starts."""
    saved = os.environ.get(ENV)
    os.environ[ENV] = "1" if n_is_public else "0"  # "0" set, not unset: cluster nodes are told it is off (NODE_ENV)
    try:
        yield
    finally:
        os.environ.pop(ENV, None) if saved is None else os.environ.__setitem__(ENV, saved)


def key(eps: float, delta: float, q: float, steps: int, accountant: str, prefix: Optional[float]) -> str:
    body = json.dumps([FORMAT, repr(float(eps)), repr(float(delta)), repr(float(q)), int(steps), accountant,
                       None if prefix is None else repr(float(prefix))])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


SIGMA_MAX = 1e4  # calibration refuses to plan above it; a remembered σ beyond it is no answer a search gave


def _file() -> Optional[Path]:
    from dpsearch.paths import home

    try:
        return home() / FILE
    except OSError as e:  # no writable home: calibration searches, as without the memo
        log.warning("no σ memo (%s): calibrating every time", e)
        return None


def remembered(k: str) -> Optional[float]:
    """The σ remembered for this key, shipped first (still to be checked by the caller), or None."""
    found = candidates(k)
    return found[0] if found else None


def candidates(k: str) -> list[float]:
    """Every σ remembered for this key, shipped first: the caller checks them in order."""
    found = []
    for path in (SHIPPED, _file()):
        entry = _read(path).get(k) if path else None
        v = entry.get("sigma") if isinstance(entry, dict) else None
        if valid(v):
            log.debug("σ = %.6g remembered for this plan (%s), to be checked", v, path)
            found.append(float(v))
    return found


def valid(v) -> bool:
    """A number some search could have answered: finite, positive, at most SIGMA_MAX."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= SIGMA_MAX


def remember(k: str, sigma: float, path: Optional[Path] = None) -> None:
    path = path or _file()
    if path is not None:
        add_entry(path, k, {"sigma": sigma}, "the calibrated σ", keep=None if path == SHIPPED else KEEP)
