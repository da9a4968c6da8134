"""Where dpsearch keeps caches (datasets, pretrained models). Override with DPSEARCH_HOME."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    p = Path(os.environ.get("DPSEARCH_HOME", Path.home() / ".cache" / "dpsearch"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def data_cache() -> Path:
    p = home() / "data"
    p.mkdir(parents=True, exist_ok=True)
    return p
