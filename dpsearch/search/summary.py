"""The sweep's result: trials sorted by objective, the Spearman figure against the oracle, the table."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dpsearch.config import method_label
from dpsearch.search.options import METRIC


@dataclass
class SweepResult:
    name: str
    path: Path
    rows: list[dict]  # one per trial, sorted by objective
    validation_privacy: dict
    spearman: Optional[float]
    best: Optional[dict]  # the selected trial; no "best oracle" pointer: that would invite choosing on the test split
    seconds: float
    extra: dict = field(default_factory=dict)


def rows_of(grid) -> list[dict]:
    rows = []
    for r in grid:
        m = r.metrics or {}
        cfg = r.config or {}
        rows.append({
            "trial": m.get("trial_id") or (os.path.basename(r.path) if r.path else "?"), "status": "ERROR" if r.error else (
                "DONE" if m.get("done") else "STOPPED"),
            "layers": cfg.get("layers"), "method": method_label(cfg.get("method"), cfg.get("rank")), "clip": cfg.get("clip"), "batch": cfg.get("batch"), "lr": cfg.get("lr"),
            "epochs": cfg.get("epochs"), "sigma": m.get("privacy/sigma"), "eps": m.get("privacy/eps"),
            "delta": m.get("privacy/delta"), "q": m.get("privacy/q"), "steps": m.get("privacy/steps"),
            "accountant": m.get("privacy/accountant"), "objective": m.get(METRIC), "oracle_accuracy": m.get("oracle/accuracy"),
            "synthetic_fid": m.get("synthetic/fid_to_validation"), "oracle_fid": m.get("oracle/fid"),
            "trainable_fraction": m.get("privacy/trainable_fraction"), "node": m.get("node"), "device": m.get("device"),
            "checkpoint": _checkpoint_uri(r.checkpoint) if r.checkpoint else None,
            # the trial's own Tune config, as sampled: what a final run retrains (method and LoRA rank included);
            # the columns above are for display ("lora r4")
            "config": dict(cfg),
            "error": _error_line(r.error) if r.error else None})
    return rows


def _checkpoint_uri(ckpt) -> str:
    return f"s3://{ckpt.path}" if type(ckpt.filesystem).__name__ == "S3FileSystem" else ckpt.path


def _error_line(err: BaseException) -> str:
    """The exception's own message ("FloatingPointError: ..."), not Ray's traceback header."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)]
    return (named[-1] if named else lines[-1] if lines else type(err).__name__)[:300]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def summarize(name: str, path: str, rows: list[dict], val_privacy: dict, seconds: float, reference=None,
              n_layers: int = 0, margin: float = 0.0) -> SweepResult:
    """Sorts by objective; how well the objective ranked trials against the oracle; the selection
    (search/selection.py: `reference`, the space's reference configuration when it ran as a trial)."""
    from scipy.stats import spearmanr

    from dpsearch.search.selection import is_reference, select

    done = [r for r in rows if _finite(r["objective"]) and r["status"] != "ERROR"]  # an errored trial is never picked
    done.sort(key=lambda r: -r["objective"])
    rest = [r for r in rows if r not in done]
    rho = None
    both = [r for r in done if _finite(r["oracle_accuracy"])]
    if len(both) >= 3:
        rho = float(spearmanr([r["objective"] for r in both], [r["oracle_accuracy"] for r in both]).statistic)
    ref = next((r for r in done if is_reference(r, reference, n_layers)), None) if reference is not None else None
    best, how = select(done, ref, margin)
    return SweepResult(name, path, done + rest, val_privacy, rho, best, seconds, {"selection": how})


def format_final(f: dict) -> str:
    """What the sweep released: the final model, its free choices and the synthetic data set."""
    r = f["released"]
    chosen = max(f["free_candidates"], key=lambda c: c["objective"])
    free = ", ".join(f"guidance {c['guidance']:g} / {c['steps']} steps: {c['objective']:.4f}" +
                     (f" (oracle {100 * c['oracle_accuracy']:.2f}%)" if c.get("oracle_accuracy") is not None else "")
                     for c in f["free_candidates"])
    return "\n".join([
        f"released ({r['design']}):",
        f"  model {f['model']}: configuration {f['config']}, (ε = {r['eps']:.3f}, δ = {r['delta']:g}) for the whole sweep",
        f"  free post-processing, chosen on the sweep's objective (DP validation set, or accounted counts): {free}; chosen guidance "
        f"{chosen['guidance']:g}, {chosen['steps']} steps (oracle figures are on the real test split, not DP, chose nothing)",
        f"  synthetic data set: {f['n_release']} images at {f['release']} (DATA_CARD.md, card.json, grid.png, synthetic.npz, data/*.parquet)",
        # one total in whole minutes: the final fine-tune's own time tracks its Poisson batch sizes (docs/privacy.md)
        f"  final stage: {f['minutes']} min" if 'minutes' in f else f"  final stage: {math.ceil(sum(f['seconds'].values()) / 60)} min"])


def format_summary(res: SweepResult) -> str:
    if res.extra.get("privacy", {}).get("tracking_store"):
        return _format_private_selection(res)
    cols = [("trial", 11), ("status", 7), ("layers", 6), ("method", 9), ("clip", 8), ("batch", 5), ("lr", 8), ("epochs", 6),
            ("sigma", 7), ("eps", 6), ("objective", 9), ("oracle_accuracy", 15)]
    def fmt(v, w):
        if v is None:
            return "-".rjust(w)
        if isinstance(v, float):
            return (f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.4f}").rjust(w)
        return str(v)[-w:].rjust(w)
    lines = ["  ".join(c.rjust(w) for c, w in cols)]
    lines += ["  ".join(fmt(r.get(c), w) for c, w in cols) for r in res.rows]
    from dpsearch.privacy.report import format_report, validation_line

    lines.append(validation_line(res.validation_privacy))
    if "privacy" in res.extra:
        lines.append(format_report(res.extra["privacy"]))
    if res.spearman is not None:
        lines.append(f"Spearman(objective, oracle accuracy) = {res.spearman:.3f} over {sum(1 for r in res.rows if _finite(r['objective']))} trials")
    if res.best:
        b = res.best
        if res.extra.get("selection", {}).get("text"):
            lines.append(res.extra["selection"]["text"])
        oracle = (f"oracle accuracy {100 * b['oracle_accuracy']:.2f}% (oracle: real test split, not DP)"
                  if b.get("oracle_accuracy") is not None else "no oracle metrics (the data has no real test split)")
        lines.append(f"selected: {b['trial']} (layers {b['layers']}, {b.get('method') or 'attention'}), {oracle}")
        lines.append(f"best trial's model: {b['checkpoint']}/model")
    f = res.extra.get("final")
    if f:
        lines.append(format_final(f))
        lines.append(_pull_hint(res.name))
    failed = [r for r in res.rows if r["status"] == "ERROR"]
    for r in failed:
        lines.append(f"failed: {r['trial']}: {r['error']}")
    lines.append(f"sweep {res.name}: {len(res.rows)} trials in {res.seconds / 60:.1f} min; results under {res.path}")
    if "mlflow" in res.extra:
        m = res.extra["mlflow"]
        lines.append(f"MLflow: {m['uri']} experiment {m['experiment']!r} (parent run {m['parent_run']})")
        if m.get("trials_compared"):
            lines.append(f"  objective and oracle accuracy against the searched parameters: {m['trials_compared']}  "
                         f"(again later: `dpsearch ui {m['experiment']}`)")
    return "\n".join(lines)


def _format_private_selection(res: SweepResult) -> str:
    """Private selection: the release's part only. The per-trial table, ids, statuses and the number of trials
    reveal K, which voids the repeat-and-select figure printed here (docs/privacy.md); they stay in the
    tracking store, printed apart by `dpsearch privacy report NAME --tracking-store`."""
    from dpsearch.privacy.report import format_report

    lines = [format_report(res.extra["privacy"])]
    if res.best:
        b = res.best
        lines.append(f"selected configuration: layers {b['layers']}, {b.get('method') or 'attention'}, C = {b['clip']:.3g}, "
                     f"B = {b['batch']}, lr = {b['lr']:.3g}, {b['epochs']} epochs")
    f = res.extra.get("final")
    if f:
        lines.append(format_final(f))
        lines.append(_pull_hint(res.name))
    lines.append(f"sweep {res.name}: private selection; results under {res.path}. The trial table, K and the tracking "
                 f"store's figure: `dpsearch privacy report {res.name} --tracking-store` (keep them apart from the release)")
    return "\n".join(lines)


def _pull_hint(name: str) -> str:
    return (f"  get the release (model, synthetic.npz, parquet data/, DATA_CARD.md, privacy report), verified: "
            f"dpsearch pull {name} --out {name}-release")
