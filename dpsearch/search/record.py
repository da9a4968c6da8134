"""sweep.json, typed: what a sweep was asked, the design it planned, its fingerprints and what it has done so
far. A resumed sweep is rebuilt from it; the privacy report and the HTML report read the same file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from dpsearch.config import ConfigError
from dpsearch.search.options import SweepOptions
from dpsearch.storage import Store

FILE = "sweep.json"


@dataclass
class SweepRecord:
    # the options as resolved when it started: ε per trial ("eps") and for V ("val_eps"), name, model, storage
    options: SweepOptions
    space: dict  # the search space, as loaded
    design: str = "per-trial"  # search/design.py DESIGNS
    n_private: Optional[int] = None  # the public N the trials plan from (never a share's or slice's exact count)
    delta: Optional[float] = None
    fingerprints: dict = field(default_factory=dict)  # salted: data, model files, space (fingerprints.py)
    share: Optional[dict] = None  # --n-private outside slices: {"keep", "salt"}
    slices: dict = field(default_factory=dict)  # the slice rule and planned sizes (privacy/slices.py)
    mlflow_parent_run: Optional[str] = None
    concurrency_used: Optional[int] = None
    elapsed_s: float = 0.0  # across every run of the sweep, interrupted ones included

    @property
    def name(self) -> str:
        return self.options.name

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def save(self, meta: Store) -> None:
        meta.write_text(FILE, json.dumps(self.as_dict(), indent=2))

    @classmethod
    def load(cls, meta: Store, name: str, storage: str) -> "SweepRecord":
        if not meta.exists(FILE):
            raise ConfigError(f"no sweep named {name!r} under {storage} (looked for {meta.uri(FILE)})")
        raw = json.loads(meta.read_text(FILE))
        known = {f.name for f in fields(cls)}
        opts = {f.name for f in fields(SweepOptions)}
        return cls(**{k: v for k, v in raw.items() if k in known and k != "options"},
                   options=SweepOptions(**{k: v for k, v in raw["options"].items() if k in opts}))
