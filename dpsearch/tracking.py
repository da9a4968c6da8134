"""MLflow for a sweep: one experiment per sweep, a parent run for the sweep, one child run per trial.

Trials are logged by Ray Tune's own MLflowLoggerCallback, narrowed to the numbers a person compares
(not Ray's bookkeeping fields), nested under the parent run, and made resume-safe (a restored trial
continues its MLflow run instead of opening a second one). Nothing private is logged: only
configurations, privacy parameters, metrics and synthetic sample grids. Credentials never are.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback

from dpsearch.config import ConfigError

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
    p = {k: config[k] for k in ("layers", "method", "rank", "clip", "batch", "lr", "epochs") if k in config}
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


def sweep_addresses(uri: str, experiment: str) -> dict[str, str]:
    """Where a person looks at a sweep in the MLflow UI: its runs, and all its trials side by side (the
    compare view: parallel coordinates of layer_a, layer_b, clip, batch, objective and the oracle metrics)."""
    import json
    from urllib.parse import quote

    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no sweep named {experiment!r} on the MLflow server {uri}")
    trials = c.search_runs([exp.experiment_id], filter_string="tags.`dpsearch.kind` = 'trial'", max_results=1000)
    ids = json.dumps([r.info.run_id for r in trials])
    return {"runs": f"{uri}/#/experiments/{exp.experiment_id}/runs",
            "trials_compared": f"{uri}/#/compare-runs?runs={quote(ids)}&experiments={quote(json.dumps([exp.experiment_id]))}"}


def start_parent(uri: str, experiment: str, run_id: Optional[str], params: dict, space_yaml: str) -> str:
    """The sweep's parent run (created once; on resume the stored id is reused)."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    if run_id:
        c.update_run(run_id, status="RUNNING")
        return run_id
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
    # MLflow 3's UI opens an untagged experiment in its GenAI (traces) view; these are training runs.
    c.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
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
    from dpsearch.html_report import plot_objective_vs_oracle

    fig = plot_objective_vs_oracle(summary.get("rows") or [], summary.get("spearman"), (summary.get("best") or {}).get("trial"))
    if fig is not None:  # the Spearman figure: did the DP synthetic validation rank trials like the oracle?
        import matplotlib.pyplot as plt

        c.log_figure(run_id, fig, "objective_vs_oracle.png")
        plt.close(fig)
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


def _tolerant(hook):
    """A tracking server that stays away past MLflow's own retries must not kill the sweep: the trial's
    results and checkpoint are in the sweep's storage either way. The gap is logged as a warning."""
    import functools
    import logging

    @functools.wraps(hook)
    def run(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any MLflow failure
            logging.getLogger(__name__).warning("MLflow %s failed after retries (%s); the sweep goes on and its "
                                                "storage keeps the result", hook.__name__, str(e).splitlines()[0][:200])
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
