"""Remembered noise levels of `calibrate_sigma`, so a σ calibrated once is not searched for again.

Calibration searches σ with a dozen PLD and a few PRV evaluations (1.5–4.5 s on a 2-core CPU); a sweep asks for
the same σ in its plan (every grid cell, at each step of the per-trial ε search), in every trial and in its final
stage, and the next sweep asks again. Only the *search* is reused: a remembered σ is checked by the requested
accountant on every use (one evaluation), and thrown away when that accountant finds it over the target ε. So a
stale or tampered entry can cost utility (a σ larger than needed), never privacy.

Kept in `$DPSEARCH_HOME/sigmas.json`, the newest KEEP entries. A key is a digest of the mechanism's public plan
(ε, δ, q, steps, accountant, warm-up σ_w): the numbers every trial's privacy.json already records.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Optional

from dpsearch.privacy.solve_cache import _read, add_entry

FILE = "sigmas.json"
FORMAT = 1  # raise it when calibration itself changes (its tolerance, the accountants' roles)
KEEP = 4096


def key(eps: float, delta: float, q: float, steps: int, accountant: str, prefix: Optional[float]) -> str:
    body = json.dumps([FORMAT, repr(float(eps)), repr(float(delta)), repr(float(q)), int(steps), accountant,
                       None if prefix is None else repr(float(prefix))])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _file() -> Path:
    from dpsearch.paths import home

    return home() / FILE


def remembered(k: str) -> Optional[float]:
    """The σ remembered for this key (still to be checked by the caller), or None."""
    entry = _read(_file()).get(k)
    v = entry.get("sigma") if isinstance(entry, dict) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return float(v)
    return None


def remember(k: str, sigma: float) -> None:
    add_entry(_file(), k, {"sigma": sigma}, "the calibrated σ", keep=KEEP)
