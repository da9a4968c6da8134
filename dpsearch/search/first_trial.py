"""The sweep's first trial: the space's reference configuration, when the space contains it, so the search
leaves the default only on evidence (under the counting objective; see first_points)."""

from __future__ import annotations

import logging
from typing import Optional

from dpsearch.config import parse_layers
from dpsearch.space import FIXED, FloatChoice, IntChoice, IntRange, LogUniform, SearchSpace

log = logging.getLogger(__name__)


def _contains(p, v) -> bool:
    if isinstance(p, LogUniform):
        return p.log_uniform[0] <= v <= p.log_uniform[1]
    if isinstance(p, IntRange):
        return v in p.values()
    if isinstance(p, (FloatChoice, IntChoice)):
        return v in p.choice
    return v == p.value


def reference_point(space: SearchSpace, n_layers: int) -> Optional[dict]:
    """The reference configuration as the Optuna parameters DefineByRun suggests, or None when the space does
    not contain it. Enqueued as a sweep's first trial, the search leaves the default only on evidence."""
    r, ps = space.reference, space.params
    a, b = parse_layers(r.layers, n_layers)
    if ps.layers.choice is not None:
        names = {parse_layers(c, n_layers): c for c in ps.layers.choice}
        if (a, b) not in names:
            return None
        point = {"layers": names[(a, b)]}
    elif ps.layers.low <= a <= b <= ps.layers.high:
        point = {"layer_end_1": a, "layer_end_2": b}
    else:
        return None
    for name in ("clip", "batch", "lr", "epochs", "multiplicity"):
        p, v = getattr(ps, name), getattr(r, name)
        if not _contains(p, v):
            return None
        if not isinstance(p, FIXED):
            point[name] = v
    if "attention" not in ps.method.values():  # the reference trains whole attention modules
        return None
    if ps.method.choice is not None:
        point["method"] = "attention"
    return point


def first_points(design, space: SearchSpace, n_layers: int) -> list[dict]:
    """The reference configuration as trial 1 under the counting objective. Not with a validation generator:
    V comes from that very configuration, so its trial would score high for looking like V."""
    if not design.counts:
        return []
    point = reference_point(space, n_layers)
    if point is None:
        log.info("the reference configuration is outside the space; the search starts without it")
    return [point] if point else []
