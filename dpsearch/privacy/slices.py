"""Disjoint-slice search: every private record goes to exactly one slice (tuning, validation generator,
final run) by a public rule that reads that record alone, so each record is touched by one part of the
search and the released model costs the largest part's ε, not their sum (docs/privacy.md, "Disjoint-slice
search").

The rule: u = SHA-256(salt ‖ label ‖ image bytes) read as a number in [0, 1), then cut at the cumulative
fractions. The salt is public (recorded with the sweep so a resume draws the same slices); the argument
needs the rule to be fixed before the data is seen and to depend on nothing but the record, not to be
secret. A keyed hash rather than a seeded permutation because a permutation of positions moves every
record when one is added or removed, and then "each record touches one part" no longer holds.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dpsearch.config import ConfigError
from dpsearch.data import ImageSet

PARTS = ("tuning", "validation", "final")
UNUSED = "unused"  # records a --n-private cap leaves out: touched by nothing


@dataclass(frozen=True)
class SliceRule:
    """Fractions of the private records per part, and the public salt of the hash."""

    tuning: float = 0.1
    validation: float = 0.1
    final: float = 0.8
    salt: str = ""

    def __post_init__(self) -> None:
        fr = [self.tuning, self.validation, self.final]
        if not all(math.isfinite(f) and 0 < f < 1 for f in fr):
            raise ConfigError(f"slice fractions must each be in (0, 1), got tuning {self.tuning:g}, validation "
                              f"{self.validation:g}, final {self.final:g}")
        if abs(sum(fr) - 1.0) > 1e-9:
            raise ConfigError(f"slice fractions must sum to 1 (every record in exactly one part), got {sum(fr):g}")

    @staticmethod
    def new(**fractions) -> "SliceRule":
        """A rule with a fresh salt: slices differ between sweeps, and no one can aim a record at a slice."""
        return SliceRule(**fractions, salt=secrets.token_hex(16))

    def to_dict(self) -> dict:
        return asdict(self)


def record_uniforms(data: ImageSet, salt: str) -> np.ndarray:
    """u ∈ [0, 1) per record from that record's label and pixels only."""
    imgs = data.images.contiguous().numpy()
    labels = data.labels.numpy()
    prefix = salt.encode() + b"\0"
    out = np.empty(len(data), dtype=np.float64)
    for i in range(len(data)):
        h = hashlib.sha256(prefix + int(labels[i]).to_bytes(4, "little") + imgs[i].tobytes()).digest()
        out[i] = int.from_bytes(h[:8], "big") / 2.0 ** 64
    return out


def split(data: ImageSet, rule: SliceRule, keep: float = 1.0) -> dict[str, ImageSet]:
    """The parts of `data`. `keep` < 1 leaves a further record-level share unused (the --n-private cap under
    this design: a seeded subset of positions would break the one-part-per-record argument)."""
    if not (0 < keep <= 1):
        raise ConfigError(f"the share of records used must be in (0, 1], got {keep:g}")
    u = record_uniforms(data, rule.salt)
    edges = np.cumsum([0.0, rule.tuning * keep, rule.validation * keep, rule.final * keep])
    parts = {}
    for name, lo, hi in zip(PARTS, edges[:-1], edges[1:]):
        idx = torch.from_numpy(np.flatnonzero((u >= lo) & (u < hi)))
        parts[name] = data.take(idx, f"{data.name}:{name}")
    for name, part in parts.items():
        if len(part) == 0:
            raise ConfigError(f"the {name} slice of {data.name} is empty ({len(data)} records, fraction "
                              f"{getattr(rule, name) * keep:g}); use more private data or larger fractions")
    return parts


def planned_sizes(n_public: int, rule: SliceRule, keep: float = 1.0) -> dict[str, int]:
    """Each part's public size: the public N times its fraction, fixed before any record is read. Every q,
    batch, δ check and count denominator is planned from these, never from the exact slice counts: adding a
    record to one slice then changes nothing in the other parts' mechanisms (docs/privacy.md)."""
    sizes = {p: max(1, int(round(n_public * keep * getattr(rule, p)))) for p in PARTS}
    return sizes


def hash_share(data: ImageSet, keep: float, salt: str) -> ImageSet:
    """The records whose hash u(x) falls below `keep`: a record-level share (the --n-private cap, keep = n/N
    fixed once from the public N and recorded). A seeded subset of positions would not do: inserting one record
    shifts which records a position holds, so a neighbouring data set's subset differs in many records; here it
    differs in at most the one record added. The count is Binomial(N, keep); runs on it plan from n, the public
    size asked for, never from the exact count."""
    if not (0 < keep <= 1):
        raise ConfigError(f"the share of records used must be in (0, 1], got {keep:g}")
    if keep == 1:
        return data
    u = record_uniforms(data, salt)
    share = data.take(torch.from_numpy(np.flatnonzero(u < keep)), f"{data.name}:share")
    if len(share) == 0:
        raise ConfigError(f"the share {keep:g} of {data.name} ({len(data)} records) is empty; ask for more records")
    return share


def share_of(n: int | None, n_all: int) -> float:
    """keep = n/N for --n-private n of N records (1 when n is None or ≥ N)."""
    if n is None or n >= n_all:
        return 1.0
    if n < 1:
        raise ConfigError(f"--n-private must be ≥ 1, got {n}")
    return n / n_all


def subset_salt(seed: int) -> str:
    """The public salt of a `dpsearch run --n-private` share: from --seed, so a quick look is repeatable. The
    argument needs the rule fixed before the data is seen, not secret (sweeps draw a fresh one and record it)."""
    return f"dpsearch-share-seed-{int(seed)}"


@dataclass(frozen=True)
class PartGuarantee:
    part: str
    eps: float
    delta: float
    accountant: str


def released_guarantee(parts: list[PartGuarantee], eps_total: float) -> tuple[PartGuarantee, str | None]:
    """Parallel composition over disjoint slices: the released (ε, δ) is the largest part's, provided all
    parts share δ (refused otherwise). Returns a warning, never a smaller number, when a part exceeds the
    total (e.g. trials restarted on resume that the planned composition did not count)."""
    if {p.part for p in parts} != set(PARTS) or len(parts) != len(PARTS):
        raise ConfigError(f"a disjoint-slice search needs exactly the parts {', '.join(PARTS)}, got "
                          f"{', '.join(p.part for p in parts)}")
    deltas = {p.delta for p in parts}
    if len(deltas) != 1:
        raise ConfigError(f"the parts of a disjoint-slice search must share one δ, got {sorted(deltas)}")
    worst = max(parts, key=lambda p: p.eps)
    warning = None
    if worst.eps > eps_total * (1 + 1e-6):
        warning = (f"the {worst.part} part costs ε = {worst.eps:.4f} > the total {eps_total:g}: the released model is "
                   f"({worst.eps:.4f}, {worst.delta:g})-DP, not ({eps_total:g}, {worst.delta:g})")
    how = (f"parallel composition over disjoint slices: the largest of the {len(parts)} parts (" +
           ", ".join(f"{p.part} {p.eps:.3f} by {p.accountant}" for p in parts) + ")")
    return PartGuarantee("released", worst.eps, worst.delta, how), warning
