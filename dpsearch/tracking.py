"""MLflow for a sweep: one experiment per sweep, a parent run for the sweep, one child run per trial.

Trials are logged by Ray Tune's own MLflowLoggerCallback, narrowed to the numbers a person compares
(not Ray's bookkeeping fields), nested under the parent run, and made resume-safe (a restored trial
continues its MLflow run instead of opening a second one). Nothing private is logged: only configurations,
privacy parameters, metrics, synthetic sample grids and the DP final model. Credentials never are.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from ray.air.integrations.mlflow import MLflowLoggerCallback

from dpsearch.config import ConfigError

_log = logging.getLogger(__name__)
# What a trial reports that is worth a metric in MLflow: an allowlist, so Ray's bookkeeping, its clock fields
# (time_this_iter_s, time_total_s, timestamp: per-epoch times, a side channel on the Poisson batch sizes) included,
# never reaches it. The only timing is the trial's released whole minutes.
_METRICS = ("epoch", "val_loss", "eps_spent", "objective", "time/total_min")
_METRIC_PREFIXES = ("synthetic/", "oracle/")
_PRIVACY_PARAMS = ("privacy/eps", "privacy/delta", "privacy/sigma", "privacy/q", "privacy/steps", "privacy/accountant",
                   "privacy/trainable_params", "privacy/trainable_fraction")
_SECRET_WORDS = ("secret", "password", "token", "access_key", "credential")


def useful_metrics(result: dict) -> dict:
    out = {}
    for k, v in result.items():
        if (k in _METRICS or k.startswith(_METRIC_PREFIXES)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            if math.isfinite(v):
                out[k] = float(v)
    return out


def trial_params(config: dict) -> dict:
    """Layer range as two integers (a, b) so MLflow's parallel coordinates can plot it."""
    p = {k: config[k] for k in ("layers", "method", "rank", "clip", "batch", "lr", "epochs", "multiplicity") if k in config}
    p.setdefault("method", "attention")
    if p["method"] != "lora":
        p.pop("rank", None)  # a rank means nothing for whole-module training
    if "layers" in p:
        a, b = str(p["layers"]).split("-")
        p["layer_a"], p["layer_b"] = int(a), int(b)
    return p


def _no_secrets(d: dict) -> dict:
    return {k: v for k, v in d.items() if not any(w in k.lower() for w in _SECRET_WORDS)}


def check_tracking(uri: str) -> None:
    """A clear error before any trial trains when the tracking server cannot be used."""
    import mlflow

    # Fail fast here; during the sweep MLflow's own client retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7,
    # exponential backoff) ride out a server that is briefly away.
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in fast}
    os.environ.update({k: v for k, v in fast.items() if saved[k] is None})
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure means "cannot use it"
        raise ConfigError(f"the MLflow tracking server {uri} is not reachable ({str(e).splitlines()[0][:200]}); "
                          f"start it (dpsearch services up) or fix MLFLOW_TRACKING_URI") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


# MLflow 3.17's UI (server/js/build) takes an experiment's kind from its workflow switch: URL `workflowType`, else
# localStorage `mlflow.workflowType`, default "genai" (the `mlflow.experimentKind` tag, set too, no longer decides).
# Columns, grouping, sort and charts are a saved view: experiment tag `mlflow.sharedViewState.<key>`, opened by URL
# `viewStateShareKey=<key>`. It drops runsExpanded, so trials are grouped by their parent's id (open by default; the
# sweep's run sits in "Additional runs", closed: opening it by groupsExpanded garbles 3.17.2's grid).
_KIND_TAG, _KIND, _ML = "mlflow.experimentKind", "custom_model_development", "workflowType=machine_learning"
_SEARCHED = ("layer_a", "layer_b", "clip", "batch", "lr", "epochs")


def _views(oracle: bool) -> dict[str, tuple[str, dict]]:
    metrics = ["objective", *(["oracle/accuracy"] if oracle else [])]
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in (*_SEARCHED, "method", "privacy/eps")]
    common = {"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", "orderByKey": "metrics.`objective`", "orderByAsc": False}
    section = {"uuid": "dpsearch-comparison", "name": "Sweep comparison", "display": True, "isReordered": False,
               "deleted": False, "isGenerated": False, "columns": 1, "cardHeight": 440}  # one chart, full width
    chart = {"uuid": "dpsearch-parallel", "type": "PARALLEL", "runsCountToCompare": 100, "metricSectionId": section["uuid"],
             "deleted": False, "isGenerated": False, "selectedParams": list(_SEARCHED), "showAllRuns": True,
             "selectedMetrics": metrics[::-1]}  # the plot is coloured by its last metric: the objective
    return {"dpsearch-trials": ("dpsearch: trials under the sweep's run", {**common, "useGroupedValuesInCharts": False,
                "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": "mlflow.parentRunId"}]}}),
            "dpsearch-compare": ("dpsearch: objective vs searched parameters", {
                **common, "searchFilter": "tags.`dpsearch.kind` = 'trial'", "compareRunCharts": [chart],
                "compareRunSections": [section], "isAccordionReordered": True})}


def _save_views(c, exp_id: str, oracle: bool) -> None:
    now = int(time.time() * 1000)
    c.set_experiment_tag(exp_id, _KIND_TAG, _KIND)
    for key, (name, state) in _views(oracle).items():
        c.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{key}", json.dumps(
            {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}))


def sweep_addresses(uri: str, experiment: str) -> dict[str, str]:
    """The sweep in the MLflow UI's model-training view: 'runs', the trials under the sweep's run with the columns
    that matter; 'trials_compared', parallel coordinates of the objective and the oracle accuracy against the searched
    parameters, coloured by the objective; 'compare_page', MLflow's compare page (its plot is not settable by URL)."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no sweep named {experiment!r} on the MLflow server {uri}")
    trials = c.search_runs([exp.experiment_id], filter_string="tags.`dpsearch.kind` = 'trial'", max_results=1000)
    _save_views(c, exp.experiment_id, any("oracle/accuracy" in r.data.metrics for r in trials))
    page, ids = f"{uri}/#/experiments/{exp.experiment_id}/runs?{_ML}", json.dumps([r.info.run_id for r in trials])
    return {"runs": f"{page}&viewStateShareKey=dpsearch-trials",
            "trials_compared": f"{page}&compareRunsMode=CHART&viewStateShareKey=dpsearch-compare",
            "compare_page": f"{uri}/#/compare-runs?runs={quote(ids)}&experiments={quote(json.dumps([exp.experiment_id]))}"}


def start_parent(uri: str, experiment: str, run_id: Optional[str], params: dict, space_yaml: str) -> str:
    """The sweep's parent run (created once; on resume the stored id is reused)."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    if run_id:
        c.update_run(run_id, status="RUNNING")
        return run_id
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment, tags={_KIND_TAG: _KIND})
    _save_views(c, exp_id, oracle=True)
    run = c.create_run(exp_id, run_name=f"sweep {experiment}", tags={"dpsearch.kind": "sweep"})
    for k, v in _no_secrets(params).items():
        c.log_param(run.info.run_id, k, str(v)[:6000])
    c.log_text(run.info.run_id, space_yaml, "search_space.json")
    return run.info.run_id


def finish_parent(uri: str, run_id: str, summary: dict, report: dict, report_text: str, status: str = "FINISHED",
                  final: Optional[dict] = None) -> None:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    if final:
        _link_final(c, run_id, final)
        _log_final_model(c, run_id, final)
    g = report["released"]
    c.log_metric(run_id, "released/eps", g["eps"])
    c.log_param(run_id, "released/delta", g["delta"])
    c.log_param(run_id, "released/mode", g["mode"])
    store = report.get("tracking_store")
    if store:  # private selection: this server holds every trial, whose own figure is the composition
        c.log_metric(run_id, "tracking_store/eps", store["eps"])
        c.log_param(run_id, "tracking_store/delta", store["delta"])
    v = report.get("validation") or {}
    for k in ("objective", "eps", "delta", "sigma", "q", "steps", "layers", "queries", "n"):
        if k in v:
            c.log_param(run_id, f"validation/{k}", v[k])
    if summary.get("spearman") is not None:
        c.log_metric(run_id, "spearman_objective_vs_oracle", summary["spearman"])
    sel = (summary.get("extra") or {}).get("selection")
    if sel and sel.get("text"):
        c.set_tag(run_id, "selection", sel["text"])
    # The selected trial only: no pointer from the oracle metrics to a model (that would invite choosing on the test split).
    row = summary.get("best")
    if row:
        c.set_tag(run_id, "best.trial", row["trial"])
        if row.get("oracle_accuracy") is not None:
            c.log_metric(run_id, "best/oracle_accuracy", row["oracle_accuracy"])
        if row.get("checkpoint"):
            c.set_tag(run_id, "best.checkpoint", row["checkpoint"])
    with tempfile.TemporaryDirectory() as d:  # the comparison as pictures, readable without the UI's state
        if write_comparison(summary, report, Path(d)):
            c.log_artifacts(run_id, d, "comparison")
    c.log_text(run_id, report_text, "privacy_report.txt")
    c.log_dict(run_id, report, "privacy_report.json")
    c.log_dict(run_id, json.loads(json.dumps(summary, default=str)), "summary.json")
    c.set_terminated(run_id, status)


def _link_final(c, run_id: str, final: dict) -> None:
    """The parent run points at what the sweep released: the final model, the data set, its card and grid."""
    import io

    from PIL import Image

    from dpsearch.storage import Store

    c.set_tag(run_id, "final.model", final["model"])
    c.set_tag(run_id, "final.release", final["release"])
    for k, v in {**{f"final/{k}": v for k, v in final["config"].items()},
                 **{f"free/{k}": v for k, v in final["free"].items()}}.items():
        c.log_param(run_id, k, v)
    c.log_metric(run_id, "final/n_release", final["n_release"])
    best = max(final["free_candidates"], key=lambda r: r["objective"])
    c.log_metric(run_id, "final/objective", best["objective"])
    if best.get("oracle_accuracy") is not None:
        c.log_metric(run_id, "final/oracle_accuracy", best["oracle_accuracy"])  # oracle: labelled, chose nothing
    # without its per-phase seconds: the final fine-tune's time tracks its Poisson batch sizes (docs/privacy.md)
    c.log_dict(run_id, {k: v for k, v in final.items() if k != "seconds"}, "final/result.json")
    release = Store(final["release"])
    c.log_text(run_id, release.read_text("DATA_CARD.md"), "final/DATA_CARD.md")
    c.log_image(run_id, Image.open(io.BytesIO(release.read_bytes("grid.png"))), "final/grid.png")


def write_comparison(summary: dict, report: dict, out: Path) -> list[Path]:
    """layers_heatmap.png (best objective per layer range a-b), objective_vs_oracle.png into `out` where there is
    something to draw; none under private selection (per-trial pictures reveal K: `privacy report --tracking-store`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpsearch.html_report import plot_layer_heatmap, plot_objective_vs_oracle

    rows, extra = summary.get("rows") or [], (summary.get("extra") or {}).get("privacy") or {}
    ends = [int(str(r["layers"]).split("-")[1]) for r in rows if r.get("layers")]
    if report.get("tracking_store") or extra.get("tracking_store") or not ends:  # private selection, or nothing ran
        return []
    heat = plot_layer_heatmap(rows, max(ends))
    for ax in (heat.axes[:len(heat.axes) // 2] if heat else ()):  # each method's panel (then their colour bars)
        ax.set(xlabel="layer_b (range end)", ylabel="layer_a (range start)")
    scatter = plot_objective_vs_oracle(rows, summary.get("spearman"), (summary.get("best") or {}).get("trial"))
    if scatter:
        scatter.axes[0].set_ylabel("oracle accuracy (real test split, not DP; chose nothing)")
    written = []
    for name, fig in (("layers_heatmap.png", heat), ("objective_vs_oracle.png", scatter)):
        if fig is not None:
            fig.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(out / name)
    return written


_HOW_TO_LOAD = """# The sweep's final model: a diffusers-format directory (vae/, unet/, class_embedder/, scheduler/)

    import mlflow; path = mlflow.artifacts.download_artifacts(run_id="{run_id}", artifact_path="final_model")
    from dpsearch.models import load_ldm; model = load_ldm(path)

with MLFLOW_TRACKING_URI set to this server. Its guarantee: the sweep's released (epsilon, delta) in this run's
privacy_report.txt. On S3: {model}\n"""


def _log_final_model(c, run_id: str, final: dict) -> None:
    """final_model/, registered where the server has a model registry; a failure is a warning (final.model: S3)."""
    import re

    from dpsearch.storage import Store

    try:
        with tempfile.TemporaryDirectory() as d:
            local = Store(final["model"]).download_dir("", Path(d) / "final_model")
            (local / "HOW_TO_LOAD.md").write_text(_HOW_TO_LOAD.format(run_id=run_id, model=final["model"]))
            c.log_artifacts(run_id, str(local), "final_model")
    except Exception as e:  # noqa: BLE001 - an artifact store that refuses or is away
        _log.warning("the final model was not logged to MLflow (%s); it is at %s", str(e).splitlines()[0][:200], final["model"])
        return
    run = c.get_run(run_id)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", c.get_experiment(run.info.experiment_id).name).strip("-") or "dpsearch"
    try:
        if not c.search_registered_models(f"name = '{name}'"):
            c.create_registered_model(name)
        v = c.create_model_version(name, f"{run.info.artifact_uri}/final_model", run_id=run_id)
        c.set_tag(run_id, "final.registered_model", f"models:/{name}/{v.version}")
    except Exception as e:  # noqa: BLE001 - a server without a model registry
        _log.warning("the final model is logged (final_model/) but not registered (%s)", str(e).splitlines()[0][:200])


def _tolerant(hook):
    """A tracking server that stays away past MLflow's own retries must not kill the sweep: the trial's
    results and checkpoint are in the sweep's storage either way. The gap is logged as a warning."""
    import functools

    @functools.wraps(hook)
    def run(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any MLflow failure
            _log.warning("MLflow %s failed after retries (%s); the sweep goes on and its storage keeps the result",
                         hook.__name__, str(e).splitlines()[0][:200])
            return None

    return run


class TrialTracker(MLflowLoggerCallback):
    """Ray Tune's MLflow callback with dpsearch's choices (see the module docstring)."""

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name,
                         tags={"mlflow.parentRunId": parent_run_id, "dpsearch.kind": "trial"})

    @_tolerant
    def log_trial_start(self, trial) -> None:
        if trial not in self._trial_runs:
            client = self.mlflow_util._get_client()
            found = client.search_runs([self.mlflow_util.experiment_id],
                                       filter_string=f"tags.`dpsearch.trial_id` = '{trial.trial_id}'", max_results=1)
            if found:  # resumed: continue the trial's run
                self._trial_runs[trial] = found[0].info.run_id
                client.update_run(found[0].info.run_id, status="RUNNING")
                return
            run = self.mlflow_util.start_run(tags={**self.tags, "dpsearch.trial_id": trial.trial_id},
                                             run_name=str(trial), set_active=False)
            self._trial_runs[trial] = run.info.run_id
            self.mlflow_util.log_params(run_id=run.info.run_id, params_to_log=trial_params(trial.config))

    @_tolerant
    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        metrics = useful_metrics(result)
        if metrics:
            step = int(result.get("epoch") or result.get("training_iteration") or iteration)
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics, step=step)

    @_tolerant
    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._trial_runs[trial]
        client = self.mlflow_util._get_client()
        last = trial.last_result or {}
        params = {k: last[k] for k in _PRIVACY_PARAMS if k in last}
        if params:
            self.mlflow_util.log_params(run_id=run_id, params_to_log=params)
        ckpt = trial.checkpoint
        if ckpt is not None:
            remote = type(ckpt.filesystem).__name__ == "S3FileSystem"
            client.set_tag(run_id, "checkpoint", f"s3://{ckpt.path}" if remote else ckpt.path)
            if last.get("done"):
                with tempfile.TemporaryDirectory() as d:
                    try:
                        import pyarrow.fs as pafs

                        pafs.copy_files(f"{ckpt.path}/samples.png", str(Path(d) / "samples.png"),
                                        source_filesystem=ckpt.filesystem)
                        client.log_artifact(run_id, str(Path(d) / "samples.png"))
                    except (OSError, FileNotFoundError):
                        pass  # no grid (an unfinished trial); nothing else to log
        if failed and trial.error_file:
            client.set_tag(run_id, "error", str(getattr(trial, "error_msg", "") or "see Ray's error.txt")[:4000])
        self.mlflow_util.end_run(run_id=run_id, status="FAILED" if failed else "FINISHED")
