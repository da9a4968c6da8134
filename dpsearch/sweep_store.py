"""What a sweep wrote to its storage, read back: sweep.json, the summary, the validation generator's
privacy record and the ids of every trial ever started. The privacy report is computed from these.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpsearch.config import ConfigError
from dpsearch.privacy.report import stored_sweep_report
from dpsearch.storage import Store

STARTED = "trials_started.json"  # ids of every trial a sweep ever started, written by search/trial_counter.py


def sweep_report(sweep_dir: str | Path) -> dict:
    """The privacy report of the sweep stored in sweep_dir, local or s3:// (its `dpsearch/` folder is read)."""
    meta = Store(sweep_dir).child("dpsearch")
    try:
        saved = json.loads(meta.read_text("sweep.json"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{sweep_dir} is not a dpsearch sweep (cannot read {meta.uri('sweep.json')}: {e})") from e
    rows = json.loads(meta.read_text("summary.json"))["rows"] if meta.exists("summary.json") else []
    vp = json.loads(meta.read_text("validation_privacy.json")) if meta.exists("validation_privacy.json") else None
    started = json.loads(meta.read_text(STARTED)) if meta.exists(STARTED) else []
    final = json.loads(meta.read_text("final/result.json")) if meta.exists("final/result.json") else None
    return stored_sweep_report(saved, rows, vp, started, final)


__all__ = ["STARTED", "sweep_report"]
