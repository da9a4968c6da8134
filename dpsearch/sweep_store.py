"""What a sweep wrote to its storage, read back: sweep.json, the summary, the validation generator's
privacy record and the ids of every trial ever started. The privacy report is computed from these.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpsearch.config import ConfigError
from dpsearch.privacy.report import stored_sweep_report
from dpsearch.storage import Store

STARTED = "trials_started.json"  # ids of every trial attempt a sweep ever started, written by search/trial_counter.py
ATTEMPTS = "attempts.json"  # how often each once-per-sweep DP stage started: {"validation": n, "final": n, "free": n}


def attempts(meta: Store) -> dict:
    return json.loads(meta.read_text(ATTEMPTS)) if meta.exists(ATTEMPTS) else {}


def record_attempt(meta: Store, stage: str) -> int:
    """Counts one start of a once-per-sweep DP stage, written before it reads any private record, so a stage that
    dies and runs again is composed in the report instead of silently drawn twice. Returns this start's number."""
    got = attempts(meta)
    got[stage] = int(got.get(stage, 0)) + 1
    meta.write_text(ATTEMPTS, json.dumps(got))
    return got[stage]


def sweep_report(sweep_dir: str | Path, final_privacy: dict | None = None) -> dict:
    """The privacy report of the sweep stored in sweep_dir, local or s3:// (its `dpsearch/` folder is read).
    final_privacy: the final run's record, for the final stage while it has not written its result yet."""
    meta = Store(sweep_dir).child("dpsearch")
    try:
        saved = json.loads(meta.read_text("sweep.json"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{sweep_dir} is not a dpsearch sweep (cannot read {meta.uri('sweep.json')}: {e})") from e
    rows = json.loads(meta.read_text("summary.json"))["rows"] if meta.exists("summary.json") else []
    vp = json.loads(meta.read_text("validation_privacy.json")) if meta.exists("validation_privacy.json") else None
    started = json.loads(meta.read_text(STARTED)) if meta.exists(STARTED) else []
    final = json.loads(meta.read_text("final/result.json")) if meta.exists("final/result.json") else None
    if final_privacy is not None:
        final = {"privacy": final_privacy}
    return stored_sweep_report(saved, rows, vp, started, final, attempts(meta))


def is_sweep(sweep_dir: str | Path) -> bool:
    return Store(sweep_dir).child("dpsearch").exists("sweep.json")


def pull_release(sweep_dir: str | Path, out: Path) -> dict:
    """A sweep's release to `out`: its final model, synthetic data set and data card, checked file by file against
    the manifest the final stage wrote, and its privacy report (the release's part only: under private selection
    nothing that reveals K). Returns the report."""
    from dpsearch.checkpoints import verify_local
    from dpsearch.privacy.report import format_report

    meta = Store(sweep_dir).child("dpsearch")
    if not meta.exists("final/result.json"):
        raise ConfigError(f"sweep {sweep_dir} has no release yet (no final/result.json): it is still running, stopped "
                          f"before its final stage, or ran with --no-release; `dpsearch sweep --resume NAME` finishes it")
    meta.download_dir("final", out)
    import shutil

    shutil.rmtree(out / "trained", ignore_errors=True)  # the final run's early copy, the same model as model/
    verify_local(out)
    rep = sweep_report(sweep_dir)
    rep.pop("tracking_store", None)
    (out / "PRIVACY_REPORT.txt").write_text(format_report(rep) + "\n")
    (out / "privacy_report.json").write_text(json.dumps(rep, indent=2))
    return rep


__all__ = ["ATTEMPTS", "STARTED", "attempts", "is_sweep", "pull_release", "record_attempt", "sweep_report"]
