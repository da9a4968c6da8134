"""One trial's wall time, and its phases where the sweep logged them, for every trial of a finished sweep, from
its MLflow runs.

    python bench/trial_phases.py SWEEP_NAME [--tracking URI]

What it reads: each trial run's duration in MLflow (start to end, seen by whoever runs the tracking server) and the
trial's released `time/total_min` (whole minutes, rounded up). Per-phase seconds (time/finetune_s, time/sample_s,
time/evaluate_s) are no longer released by a trial (docs/privacy.md, "What leaves a trial": a fine-tune's time tracks
the sum of its Poisson batch sizes); they are shown only for sweeps run before that change, which logged them, such
as mnist-eps5-20261125-234029 (docs/performance.md). For a new sweep the table has the whole-trial time only; time
the phases with bench/dp_step.py (DP steps) and bench/sampling.py (sampling) instead. "other" is the rest of the
trial's run (per-epoch validation loss, checkpoint upload and verification, Ray's reporting). The sweep line compares
the parent run with the trials: what is left is the DP validation generator and Ray Tune's own time between trials.
Prints a table, writes bench/results/trial_phases.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PHASES = ("finetune", "sample", "evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--tracking", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI, else the embedded server)")
    a = ap.parse_args()
    from mlflow import MlflowClient

    uri = a.tracking
    if uri is None:
        import os

        from dpsearch import services

        s = services.load()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (s.mlflow_uri if s else None)
        if uri is None:
            raise SystemExit("no tracking server: pass --tracking or `dpsearch services up`")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(a.sweep)
    if exp is None:
        raise SystemExit(f"no MLflow experiment named {a.sweep!r} on {uri}")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if not r.data.tags.get("mlflow.parentRunId")]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and r.info.status == "FINISHED" and r.info.end_time
              and "objective" in r.data.metrics]  # ran to its end (a stopped trial has no finite objective)
    rows = [_row(r) for r in sorted(trials, key=lambda r: r.info.start_time)]
    if not rows:
        raise SystemExit(f"sweep {a.sweep!r} has no finished trial runs")
    phased = all(f"{p}_s" in r for r in rows for p in PHASES)  # a sweep from before phases stopped being released
    cols = ["wall_s", *(f"{p}_s" for p in PHASES), "other_s"] if phased else ["wall_s"]
    print(f"{'trial':<20} {'layers':>6} {'B':>5} {'ep':>3} {'min':>4} " + " ".join(f"{c[:-2]:>9}" for c in cols))
    for r in rows:
        print(f"{r['trial']:<20} {str(r['layers']):>6} {str(r['batch']):>5} {str(r['epochs']):>3} "
              f"{'-' if r['total_min'] is None else int(r['total_min']):>4} " + " ".join(f"{r[c]:9.0f}" for c in cols))
    mean = {c: statistics.mean(r[c] for r in rows) for c in cols}
    print(f"{'mean':<42} " + " ".join(f"{mean[c]:9.0f}" for c in cols))
    share = {p: mean[f"{p}_s"] / mean["wall_s"] for p in (*PHASES, "other")} if phased else {}
    if phased:
        print("share of a trial: " + ", ".join(f"{p} {100 * v:.0f}%" for p, v in share.items()))
    else:
        print("no per-phase times: trials release only their whole minutes (min); wall is the MLflow run's duration")
    out = {"sweep": a.sweep, "trials": rows, "mean": mean, "share": share}
    if parent and parent[0].info.end_time:
        p = parent[0].info
        sweep_wall = (p.end_time - p.start_time) / 1000
        outside = sweep_wall - sum(r["wall_s"] for r in rows)
        out.update(sweep_wall_s=sweep_wall, outside_trials_s=outside)
        print(f"sweep: {sweep_wall / 60:.1f} min in its parent run, of which {outside / 60:.1f} min outside the "
              f"trials (validation generator, Ray Tune between trials; with concurrency > 1 trials overlap and "
              f"this is negative)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trial_phases.json").write_text(json.dumps(out, indent=2))


def _row(r) -> dict:
    """One finished trial run: its duration, its released minutes, and its phases if it logged them."""
    m = r.data.metrics
    wall = (r.info.end_time - r.info.start_time) / 1000
    row = {"trial": r.info.run_name, "layers": r.data.params.get("layers"), "batch": r.data.params.get("batch"),
           "epochs": r.data.params.get("epochs"), "wall_s": wall, "total_min": m.get("time/total_min")}
    if all(f"time/{p}_s" in m for p in PHASES):
        row.update({f"{p}_s": m[f"time/{p}_s"] for p in PHASES})
        row["other_s"] = wall - sum(row[f"{p}_s"] for p in PHASES)
    return row


if __name__ == "__main__":
    main()
