"""`dpsearch report SWEEP`: one self-contained HTML file a person can open, mail or archive.

It reads only what the sweep stored (summary, privacy report, each trial's sample grid), so it works
for a local or an S3 sweep and needs no MLflow server. Plots are matplotlib PNGs embedded as data URIs.
Oracle numbers (real test split) are labelled as such: they judge the search, they never steer it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from dpsearch.config import ConfigError, method_label
from dpsearch.storage import Store


def _png(fig) -> str:
    """A figure as an embeddable data URI (and closed: reports draw many)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _scored(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "DONE" and _finite(r.get("objective"))]


def plot_objective_vs_oracle(rows: list[dict], spearman, selected: str | None = None):
    """`selected`: the released trial (search/selection.py may keep the reference over the best objective)."""
    import matplotlib.pyplot as plt

    pts = [r for r in _scored(rows) if _finite(r.get("oracle_accuracy"))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 4))
    ax.scatter([r["objective"] for r in pts], [r["oracle_accuracy"] for r in pts], c="tab:blue")
    for r in pts:
        ax.annotate(r["layers"], (r["objective"], r["oracle_accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    best = next((r for r in pts if r.get("trial") == selected), None) or max(pts, key=lambda r: r["objective"])
    ax.scatter([best["objective"]], [best["oracle_accuracy"]], s=160, facecolors="none", edgecolors="tab:red",
               label="selected")
    rho = f"Spearman ρ = {spearman:.3f}" if _finite(spearman) else "Spearman ρ: fewer than 3 scored trials"
    ax.set(xlabel="objective: accuracy on the DP validation set (or noisy held-out count)",
           ylabel="ORACLE accuracy (real test split, not DP)", title=rho)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def plot_layer_heatmap(rows: list[dict], n_layers: int):
    """Best objective per layer range a-b (start × end), one panel per method; empty cells were not tried."""
    import matplotlib.pyplot as plt
    import numpy as np

    pts = _scored(rows)
    if not pts:
        return None
    methods = sorted({r.get("method") or "attention" for r in pts})
    fig, axes = plt.subplots(1, len(methods), figsize=(4.8 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        grid = np.full((n_layers, n_layers), np.nan)
        for r in pts:
            if (r.get("method") or "attention") != method:
                continue
            a, b = (int(x) for x in str(r["layers"]).split("-"))
            if 1 <= a <= b <= n_layers:
                grid[a - 1, b - 1] = np.nanmax([grid[a - 1, b - 1], r["objective"]])
        im = ax.imshow(grid, origin="lower", cmap="viridis")
        ax.set_xticks(range(n_layers), range(1, n_layers + 1))
        ax.set_yticks(range(n_layers), range(1, n_layers + 1))
        ax.set(xlabel="layer range end b", ylabel="layer range start a", title=f"best objective per layer range: {method}")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_clip_batch(rows: list[dict]):
    import matplotlib.pyplot as plt

    pts = _scored(rows)
    if not pts:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    batches = sorted({r["batch"] for r in pts})
    cmap = plt.get_cmap("tab10")
    for i, b in enumerate(batches):
        sel = [r for r in pts if r["batch"] == b]
        a1.scatter([r["clip"] for r in sel], [r["objective"] for r in sel], color=cmap(i), label=f"B = {b}")
    a1.set(xscale="log", xlabel="clip norm C", ylabel="objective", title="clip norm")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.boxplot([[r["objective"] for r in pts if r["batch"] == b] for b in batches])
    a2.set_xticks(range(1, len(batches) + 1), [str(b) for b in batches])
    a2.set(xlabel="expected batch size B", ylabel="objective", title="batch size")
    a2.grid(alpha=0.3)
    return fig


def sample_grid_image(checkpoint: str | None) -> bytes | None:
    """The PNG bytes of a trial's sample grid, from its checkpoint (local or S3)."""
    if not checkpoint:
        return None
    try:
        return Store(checkpoint).read_bytes("samples.png")
    except (OSError, FileNotFoundError):
        return None


def _sample_grid(checkpoint: str | None) -> str | None:
    data = sample_grid_image(checkpoint)
    return None if data is None else "data:image/png;base64," + base64.b64encode(data).decode()


def rows_from_mlflow(runs) -> list[dict]:
    """The sweep's child runs (a `mlflow.search_runs` DataFrame) as the rows the plots take."""
    import pandas as pd

    def get(r, col, cast=float):
        v = r.get(col)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v) else cast(v)

    trials = runs[runs.get("tags.dpsearch.kind") == "trial"] if "tags.dpsearch.kind" in runs else runs
    rows = []
    for _, r in trials.iterrows():
        r = r.to_dict()
        rows.append({"trial": r.get("tags.dpsearch.trial_id") or r.get("run_id"),
                     "status": "DONE" if r.get("status") == "FINISHED" and get(r, "metrics.objective") is not None
                     else str(r.get("status")),
                     "layers": r.get("params.layers"),
                     "method": method_label(r.get("params.method"), get(r, "params.rank", int)),
                     "clip": get(r, "params.clip"), "batch": get(r, "params.batch", int),
                     "lr": get(r, "params.lr"), "epochs": get(r, "params.epochs", int),
                     "eps": get(r, "params.privacy/eps"), "delta": get(r, "params.privacy/delta"),
                     "objective": get(r, "metrics.objective"), "oracle_accuracy": get(r, "metrics.oracle/accuracy"),
                     "synthetic_fid": get(r, "metrics.synthetic/fid_to_validation"),
                     "checkpoint": r.get("tags.checkpoint")})
    return rows


def _table(rows: list[dict]) -> str:
    cols = [("trial", "trial"), ("status", "status"), ("layers", "layers a-b"), ("method", "method"), ("clip", "C"), ("batch", "B"),
            ("lr", "lr"), ("epochs", "epochs"), ("sigma", "σ"), ("eps", "ε"), ("delta", "δ"),
            ("objective", "objective"), ("synthetic_fid", "FID(S, V)"), ("oracle_accuracy", "ORACLE acc."),
            ("oracle_fid", "ORACLE FID"), ("error", "error")]

    def cell(k, v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if k in ("clip", "lr", "delta") else f"{v:.4f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(n)}</th>" for _, n in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(k, r.get(k))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;white-space:pre-wrap;font-size:12px}
.plots img{margin:0 1em 1em 0;vertical-align:top}.grids figure{display:inline-block;margin:0 1em 1em 0}
.oracle{color:#8a4b00}"""


def build_report(sweep_path: str, out: Path) -> Path:
    """Writes the HTML report of the sweep stored at sweep_path (local dir or s3://…) to out."""
    from dpsearch.privacy.report import format_report
    from dpsearch.sweep_store import sweep_report

    meta = Store(sweep_path).child("dpsearch")
    if not meta.exists("sweep.json"):
        raise ConfigError(f"{sweep_path} is not a dpsearch sweep (no dpsearch/sweep.json there)")
    if not meta.exists("summary.json"):
        raise ConfigError(f"sweep {sweep_path} has no summary yet: it is running or stopped before its end; "
                          f"finish it with `dpsearch sweep --resume NAME`")
    saved = json.loads(meta.read_text("sweep.json"))
    summary = json.loads(meta.read_text("summary.json"))
    import warnings

    with warnings.catch_warnings():  # Opacus' RDP order notice; the bound is still valid, the report says which
        warnings.filterwarnings("ignore", message="Optimal order")
        privacy = sweep_report(sweep_path)
    rows = summary["rows"]
    n_layers = int(saved["space"]["params"]["layers"].get("high", 0) or 0) or max(
        [int(str(r["layers"]).split("-")[1]) for r in _scored(rows)] or [1])
    best = summary.get("best")  # an older summary's "best_oracle" is not shown: no pointer from the test split to a model
    g = privacy["released"]
    plots = [_png(f) for f in (plot_objective_vs_oracle(rows, summary.get("spearman"), (best or {}).get("trial")),
                               plot_layer_heatmap(rows, n_layers), plot_clip_batch(rows)) if f is not None]
    grids = []
    for r in _scored(rows)[:4]:
        uri = _sample_grid(r.get("checkpoint"))
        if uri:
            grids.append(f'<figure><img src="{uri}" width="280"><figcaption>{html.escape(r["trial"])}: layers '
                         f'{html.escape(str(r["layers"]))}, {html.escape(r.get("method") or "attention")}, '
                         f'objective {r["objective"]:.3f}</figcaption></figure>')
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>dpsearch sweep {e(summary['name'])}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Sweep {e(summary['name'])}</h1>",
        f"<p>{len(rows)} trials, {len(_scored(rows))} scored; wall time {summary.get('seconds', 0) / 60:.1f} min; "
        f"stored at <code>{e(str(summary.get('path')))}</code>.</p>",
        f"<p><b>Released model's guarantee: ε = {g['eps']:.3f}, δ = {g['delta']:g}</b> ({e(g['mode'])}); each trial "
        f"ε = {saved['options']['eps']:g}. Details below.</p>",
    ]
    store = privacy.get("tracking_store")
    if store:
        # Private selection: this page shows every trial (and so K), which voids the repeat-and-select figure for
        # it; the only true figure for what it publishes is the tracking store's composition (docs/privacy.md).
        parts[1] = f"<h1>TRACKING STORE of sweep {e(summary['name'])}: not for publication</h1>"
        parts[3] = (f"<p class='oracle'><b>This page shows every trial and so reveals K: what it shows is (ε = "
                    f"{store['eps']:.3f}, δ = {store['delta']:g})-DP, the composition of all trials, not the "
                    f"repeat-and-select figure of the sweep's release (ε = {g['eps']:.3f}). Never publish it beside "
                    f"the release.</b></p>")
    if best:
        how = ((summary.get("extra") or {}).get("selection") or {}).get("text", "best objective")
        oracle = (f"ORACLE accuracy {best['oracle_accuracy']:.4f}" if best.get("oracle_accuracy") is not None
                  else "no ORACLE metrics (the data has no real test split)")
        parts.append(f"<p>Selected ({e(how.removeprefix('selection: '))}): trial {e(best['trial'])}, layers {e(str(best['layers']))}, "
                     f"{e(best.get('method') or 'attention')}, C {best['clip']:.3g}, B {best['batch']}, "
                     f"objective {best['objective']:.4f}, <span class='oracle'>{oracle}</span>; "
                     f"model: <code>{e(str(best.get('checkpoint')))}/model</code></p>")
    parts += ["<h2>Plots</h2><div class='plots'>", *[f"<img src='{p}'>" for p in plots], "</div>"]
    if grids:
        parts += ["<h2>Synthetic samples (top trials by objective)</h2><div class='grids'>", *grids, "</div>"]
    parts += ["<h2>Trials</h2>", _table(rows),
              "<p class='oracle'>ORACLE columns are measured on the real test split: not DP, never used for "
              "selection.</p>",
              "<h2>Privacy report</h2>", f"<pre>{e(format_report(privacy, tracking_store=bool(store)))}</pre>",
              "</body></html>"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


__all__ = ["build_report", "plot_objective_vs_oracle", "plot_layer_heatmap", "plot_clip_batch", "rows_from_mlflow",
           "sample_grid_image"]
