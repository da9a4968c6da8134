"""A real smoke sweep against the embedded S3 + MLflow servers: parent and child runs, only useful
fields, no secrets anywhere, checkpoints on S3, and a resume from S3 alone."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpsearch import services
from dpsearch.cli import main
from tests.cluster_hosts import kill_tree

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SMOKE = Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml"
RAY_BOOKKEEPING = ("time_this_iter_s", "pid", "hostname", "node_ip", "time_total_s", "timestamp", "training_iteration")


def test_mlflow_gets_neither_per_phase_times_nor_rays_clock_only_whole_minutes():
    from dpsearch.tracking import useful_metrics

    result = {"epoch": 2, "objective": 0.8, "oracle/accuracy": 0.9, "time/total_min": 3, "time/finetune_s": 412.7,
              "time_this_iter_s": 205.1, "time_total_s": 431.0, "time_since_restore": 431.0, "timestamp": 1.76e9,
              "training_iteration": 2, "pid": 4242}
    assert useful_metrics(result) == {"epoch": 2.0, "objective": 0.8, "oracle/accuracy": 0.9, "time/total_min": 3.0}


def _children(client, name):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("dpsearch.kind") == "sweep"]
    return parent, [r for r in runs if r.data.tags.get("dpsearch.kind") == "trial"]


@pytest.mark.e2e
def test_sweep_is_tracked_in_mlflow_and_checkpointed_on_s3(tracked, tmp_path, capsys):
    from mlflow import MlflowClient

    res = tracked
    s = services.load()
    assert res.path == "s3://dpsearch/sweeps/tracked"
    client = MlflowClient(s.mlflow_uri)
    parent, children = _children(client, "tracked")
    assert len(parent) == 1 and len(children) == 3
    assert all(c.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for c in children)
    for c in children:
        p, m = c.data.params, c.data.metrics
        assert {"layer_a", "layer_b", "clip", "batch", "lr", "epochs", "privacy/sigma", "privacy/q", "privacy/steps",
                "privacy/eps", "privacy/delta", "privacy/accountant", "privacy/trainable_fraction"} <= set(p)
        assert int(p["layer_a"]) <= int(p["layer_b"]) and float(p["privacy/eps"]) <= 5.0
        assert {"objective", "oracle/accuracy", "synthetic/fid_to_validation", "eps_spent"} <= set(m)
        assert not set(RAY_BOOKKEEPING) & set(m)
        assert c.data.tags["checkpoint"].startswith("s3://dpsearch/sweeps/tracked/")
        assert [a.path for a in client.list_artifacts(c.info.run_id)] == ["samples.png"]
        assert len(client.get_metric_history(c.info.run_id, "eps_spent")) >= 1  # per epoch
    pm = parent[0].data
    assert pm.metrics["released/eps"] > max(float(c.data.params["privacy/eps"]) for c in children)
    assert {"privacy_report.json", "privacy_report.txt", "summary.json", "search_space.json", "comparison"} <= {
        a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {a.path for a in client.list_artifacts(parent[0].info.run_id, "comparison")} == {
        "comparison/layers_heatmap.png", "comparison/objective_vs_oracle.png"}

    # credentials never reach MLflow: not in params, tags, metrics or any text artifact
    key, secret = services._credentials(Path(s.dir))
    blobs = []
    for r in parent + children:
        blobs += [json.dumps(r.data.params), json.dumps(r.data.tags)]
        for a in client.list_artifacts(r.info.run_id):
            if a.path.endswith((".json", ".txt")):
                blobs.append(Path(client.download_artifacts(r.info.run_id, a.path, str(tmp_path))).read_text())
    assert blobs and not any(key in b or secret in b for b in blobs)

    # the best model comes back from S3 in diffusers format
    out = tmp_path / "best"
    assert main(["pull", res.best["checkpoint"], "--out", str(out)]) == 0
    assert (out / "model" / "unet" / "config.json").exists() and (out / "privacy.json").exists()
    assert (out / "manifest.json").exists()

    # a checkpoint damaged on the server is refused by name, not handed over as a model
    from dpsearch.config import ConfigError
    from dpsearch.storage import Store

    ckpt = Store(res.best["checkpoint"])
    grid = ckpt.read_bytes("samples.png")
    ckpt.write_bytes("samples.png", b"not the grid that was uploaded")
    try:
        assert main(["pull", res.best["checkpoint"], "--out", str(tmp_path / "again")]) == 2
    finally:
        ckpt.write_bytes("samples.png", grid)  # the session's other tests read this sweep
    assert "corrupt: samples.png" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="corrupt: samples.png"):
        from dpsearch.checkpoints import verify_local

        verify_local(tmp_path / "again")


@pytest.mark.e2e
def test_sweep_killed_resumes_from_s3_alone(tiny_model_dir, tmp_path):
    from mlflow import MlflowClient

    space = yaml.safe_load(SMOKE.read_text())
    space["params"].update(epochs={"value": 3}, batch={"value": 50})
    space["accountant"] = "rdp"  # the per-trial ε solve: seconds with RDP (the subject is the resume from S3)
    sp = tmp_path / "space.yaml"
    sp.write_text(yaml.safe_dump(space))
    services.up()
    cmd = [sys.executable, "-m", "dpsearch.cli", "sweep", "--space", str(sp), "--eps", "5", "--trials", "2",
           "--model", str(tiny_model_dir), "--name", "s3resume", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = services.load()
    import boto3

    c = s.client_env()
    s3 = boto3.client("s3", endpoint_url=c["AWS_ENDPOINT_URL"], aws_access_key_id=c["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=c["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    deadline = time.time() + 300
    try:
        while True:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dpsearch", Prefix="sweeps/s3resume/").get("Contents", [])]
            if any("/checkpoint_" in k for k in keys):
                break
            assert proc.poll() is None, "\n".join(ln for ln in proc.stderr.read().decode().splitlines()
                                                   if "failed to converge" not in ln)[-3000:]
            assert time.time() < deadline, "no checkpoint on S3 within 5 minutes"
            time.sleep(0.5)
    finally:
        kill_tree(proc)
    shutil.rmtree(Path.home() / "ray_results" / "s3resume", ignore_errors=True)  # nothing local survives
    assert main(["sweep", "--resume", "s3resume", "--quiet"]) == 0
    summary = json.loads(s3.get_object(Bucket="dpsearch", Key="sweeps/s3resume/dpsearch/summary.json")["Body"].read())
    assert [r["status"] for r in summary["rows"]] == ["DONE", "DONE"]
    _, children = _children(MlflowClient(s.mlflow_uri), "s3resume")
    assert len(children) == 2  # the resumed trial continued its run, no duplicate


@pytest.mark.e2e
def test_mlflow_ui_shows_the_real_sweeps_trials_without_a_click(tracked):
    """The real smoke sweep's addresses (`dpsearch ui tracked`) in a fresh headless Chromium: nothing clicked."""
    from mlflow import MlflowClient

    _, children = _children(MlflowClient(services.load().mlflow_uri), "tracked")
    _look_without_a_click(services.load().mlflow_uri, "tracked", children, "mlflow-ui")


@pytest.mark.e2e
def test_ui_prints_where_the_sweeps_trials_are_side_by_side(tracked, capsys):
    from urllib.parse import unquote

    from mlflow import MlflowClient

    assert main(["ui", "tracked"]) == 0
    out = unquote(capsys.readouterr().out)
    exp = MlflowClient(services.load().mlflow_uri).get_experiment_by_name("tracked")
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=dpsearch-trials" in out
    assert "compareRunsMode=CHART&viewStateShareKey=dpsearch-compare" in out
    assert "objective and oracle accuracy against the searched parameters" in out


@pytest.mark.e2e
def test_slices_sweep_releases_a_model_at_the_total_and_links_it_from_the_parent_run(tiny_model_dir, embedded_services_dir, tmp_path):
    """--eps-total on disjoint slices with the counting objective, against the real S3 and MLflow: the reference
    configuration as trial 1, trials on the tuning slice scored by noisy counts on the validation slice, the
    selected configuration trained again on the final slice, free guidance chosen by counts, the release and
    its card; the final run warm-started from the selected trial. (The validation generator is exercised by the
    --eps sweeps above.)"""
    import yaml
    from mlflow import MlflowClient

    from dpsearch.search import SweepOptions, format_summary, run_sweep
    from dpsearch.space import load_space
    from dpsearch.storage import Store

    raw = load_space("smoke").model_dump(mode="json")
    raw["validation"]["objective"] = "count"
    raw["accountant"] = "rdp"  # the per-trial ε solve calibrates σ some thirty times: seconds with RDP, a minute with PRV
    (tmp_path / "counted.yaml").write_text(yaml.safe_dump(raw))
    res = run_sweep(SweepOptions(eps_total=5.0, space=str(tmp_path / "counted.yaml"), trials=2, concurrency=1,
                                 sampler="random", seed=2, model=str(tiny_model_dir), name="sliced", progress=False,
                                 warm_start=True))
    rep, final = res.extra["privacy"], res.extra["final"]
    # --warm-start: the final run started from the selected trial's DP weights, and the guarantee says so
    # (tests/search/test_final.py checks the weights themselves)
    assert final["privacy"]["start"] == "selected trial's DP weights (an output of the tuning part, covered by its ε)"
    assert "trained once from the selected trial's DP weights (an output of the tuning part" in rep["statement"]
    assert rep["validation"]["objective"] == "count" and rep["validation"]["queries"] == 2 + 2
    ref = load_space("smoke").reference
    assert any((r["layers"], r["batch"], r["epochs"]) == ("1-7", ref.batch, ref.epochs) and
               r["lr"] == pytest.approx(ref.lr) for r in res.rows)  # the reference ran as a trial
    assert not Store(res.path).child("dpsearch").exists("validation.npz")  # no generator was trained
    sizes = rep["released"]["slices"]["planned"]  # public: the space's n_private times the rule's fractions
    assert rep["design"] == "slices" and abs(sum(sizes.values()) - 400) <= 2 and sizes["final"] > 4 * sizes["tuning"]
    assert "sizes" not in rep["released"]["slices"]  # exact slice counts are never stored or published
    parts = {p["part"]: p for p in rep["released"]["parts"]}
    assert set(parts) == {"tuning", "validation", "final"} and all(p["eps"] <= 5.0 for p in parts.values())
    assert rep["released"]["eps"] == max(p["eps"] for p in parts.values()) and 4.5 < rep["released"]["eps"] <= 5.0
    assert parts["final"]["eps"] == final["privacy"]["eps"] and "over_total" not in rep
    # trials ran on the tuning slice, with the final run's q: batch scaled by its size
    done = [r for r in res.rows if r["status"] == "DONE"]
    # trials on the tuning slice with the batch scaled by |tuning|/|final|: the final run's q up to q = 1/⌈N/B⌉
    from dpsearch.privacy.accounting import poisson_plan
    from dpsearch.space import scaled_batch

    scale = rep["released"]["slices"]["trial_batch_scale"]
    rule = rep["released"]["slices"]["rule"]
    assert scale == pytest.approx(rule["tuning"] / rule["final"])
    assert done and all(r["eps"] < 5.0 and r["q"] == pytest.approx(
        poisson_plan(sizes["tuning"], scaled_batch(r["batch"], scale), r["epochs"])[0]) for r in done)
    # the reference (trial 1) is released unless a trial beat it on the counts by the space's margin
    sel, margin = res.extra["selection"], load_space("smoke").validation.reference_margin
    assert sel["reference_trial"] in {r["trial"] for r in done} and sel["margin"] == margin
    assert res.best["trial"] == (sel["reference_trial"] if sel["lead"] < margin else sel["best_trial"])
    assert final["config"]["batch"] == res.best["batch"] and final["privacy"]["q"] == pytest.approx(
        poisson_plan(sizes["final"], res.best["batch"], res.best["epochs"])[0])
    # the free choice was made on the counts, among the space's candidates
    assert {(c["guidance"], c["steps"]) for c in final["free_candidates"]} == {(1.0, 3), (3.0, 3)}
    assert final["free"]["guidance"] == max(final["free_candidates"], key=lambda c: c["objective"])["guidance"]
    # the release is on S3 with its card, whose guarantee is the sweep's, not a trial's
    release = Store(final["release"])
    card = json.loads(release.read_text("card.json"))
    assert final["release"].startswith("s3://dpsearch/sweeps/sliced/") and card["n_images"] == final["n_release"] == 100
    assert card["privacy"]["eps"] == rep["released"]["eps"] and "disjoint slices" in card["privacy"]["covers"]
    assert card["configuration"]["final_run_start"] == final["privacy"]["start"]
    assert release.exists("synthetic.npz") and release.exists("grid.png") and not release.exists("png")
    # final/privacy.json carries the sweep's figure, for a larger `dpsearch release` of the final model later
    final_dir = Store(final["release"].rsplit("/", 1)[0])
    assert json.loads(final_dir.read_text("privacy.json"))["eps"] == rep["released"]["eps"]
    # the parent run links to it
    client = MlflowClient(services.load().mlflow_uri)
    parent, children = _children(client, "sliced")
    tags, params = parent[0].data.tags, parent[0].data.params
    assert tags["final.release"] == final["release"] and tags["final.model"] == final["model"]
    assert float(params["free/guidance"]) == final["free"]["guidance"] and params["released/mode"] == "slices"
    assert tags["selection"].startswith("selection: ")
    assert {"final/DATA_CARD.md", "final/grid.png", "final/result.json"} <= {
        a.path for a in client.list_artifacts(parent[0].info.run_id, "final")}
    assert len(children) == 2
    text = format_summary(res)
    assert "released (disjoint slices" in text and "(ε = " in text


# --- the parent run's pictures, the final model in MLflow, and the UI's addresses (dpsearch/tracking.py) -------------

TINY_ROWS = [  # two trials on range 2-3 (the better one counts), one on 1-1, one unscored
    {"trial": "t1", "status": "DONE", "layers": "2-3", "objective": 0.5, "oracle_accuracy": 0.61},
    {"trial": "t2", "status": "DONE", "layers": "2-3", "objective": 0.7, "oracle_accuracy": 0.80},
    {"trial": "t3", "status": "DONE", "layers": "1-1", "objective": 0.4, "oracle_accuracy": 0.55},
    {"trial": "t4", "status": "ERROR", "layers": "1-3", "objective": None, "oracle_accuracy": None}]


def _summary(rows=TINY_ROWS, **extra):
    return {"name": "pics", "rows": rows, "spearman": 1.0, "best": rows[1] if len(rows) > 1 else None, "extra": extra}


def test_comparison_pictures_are_written_and_drawn_from_the_rows(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from dpsearch.tracking import write_comparison

    drawn, save = {}, Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, f, **kw: (drawn.__setitem__(Path(f).name, self), save(self, f, **kw)))
    files = write_comparison(_summary(), {"released": {}}, tmp_path)
    assert [f.name for f in files] == ["layers_heatmap.png", "objective_vs_oracle.png"]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    heat = drawn["layers_heatmap.png"].axes[0]
    grid = heat.images[0].get_array()  # rows: layer_a 1..3, columns: layer_b 1..3; the unscored trial is not drawn
    assert grid[1, 2] == 0.7 and grid[0, 0] == 0.4 and grid.mask.sum() == 7
    assert (heat.get_xlabel(), heat.get_ylabel()) == ("layer_b (range end)", "layer_a (range start)")
    scatter = drawn["objective_vs_oracle.png"].axes[0]
    assert scatter.get_ylabel() == "oracle accuracy (real test split, not DP; chose nothing)"
    assert sorted(map(tuple, scatter.collections[0].get_offsets().tolist())) == [(0.4, 0.55), (0.5, 0.61), (0.7, 0.8)]


def test_comparison_pictures_are_skipped_without_rows_or_oracle_and_under_private_selection(tmp_path):
    from dpsearch.tracking import write_comparison

    assert write_comparison(_summary(rows=[]), {"released": {}}, tmp_path) == []
    no_oracle = [{**r, "oracle_accuracy": None} for r in TINY_ROWS]
    assert [f.name for f in write_comparison(_summary(no_oracle), {"released": {}}, tmp_path)] == ["layers_heatmap.png"]
    private = tmp_path / "private"
    private.mkdir()
    store = {"eps": 9.0, "delta": 1e-6}  # private selection: the per-trial pictures would reveal K
    assert write_comparison(_summary(), {"released": {}, "tracking_store": store}, private) == []
    assert write_comparison(_summary(privacy={"tracking_store": store}), {"released": {}}, private) == []
    assert list(private.iterdir()) == []


def _fake_sweep(uri: str, name: str, final=None, report=None):
    """A sweep's MLflow record without training: the parent run, three trial runs with the params and metrics the
    TrialTracker logs, and the parent's finish (pictures, final model)."""
    from mlflow import MlflowClient

    from dpsearch.tracking import finish_parent, start_parent, trial_params

    c = MlflowClient(uri)
    pid = start_parent(uri, name, None, {"eps": 5.0, "trials": 3}, "{}")
    exp_id = c.get_run(pid).info.experiment_id
    rows = []
    for i, (layers, clip, batch, obj, oracle) in enumerate([("1-3", 0.5, 50, 0.61, 0.70), ("2-5", 1.0, 100, 0.72, 0.81),
                                                          ("4-7", 2.0, 50, 0.55, 0.66)]):
        run = c.create_run(exp_id, run_name=f"trial_{i:05d}", tags={"mlflow.parentRunId": pid, "dpsearch.kind": "trial"})
        config = {"layers": layers, "clip": clip, "batch": batch, "lr": 1e-3, "epochs": 2}
        for k, v in {**trial_params(config), "privacy/eps": 4.9}.items():
            c.log_param(run.info.run_id, k, v)
        for epoch in (1, 2):
            c.log_metric(run.info.run_id, "epoch", epoch, step=epoch)
        c.log_metric(run.info.run_id, "objective", obj, step=2)
        c.log_metric(run.info.run_id, "oracle/accuracy", oracle, step=2)
        c.set_terminated(run.info.run_id)
        rows.append({"trial": run.info.run_name, "status": "DONE", "objective": obj, "oracle_accuracy": oracle, **config})
    summary = {"name": name, "rows": rows, "spearman": 0.5, "best": rows[1], "extra": {}}
    report = report or {"released": {"eps": 5.0, "delta": 1e-6, "mode": "per-trial"}}
    finish_parent(uri, pid, summary, report, "report", final=final)
    return c, pid


@pytest.mark.e2e
def test_parent_run_carries_the_final_model_registered_and_the_pictures(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """Against the embedded MLflow (sqlite: it has a model registry) and S3: the experiment opens in the training view,
    the final model is a loadable artifact of the sweep's run and a registered model version, the comparison pictures
    are there, and neither the pictures under private selection nor a registry that refuses stop the sweep."""
    import io
    import logging

    from PIL import Image

    from dpsearch.models import load_ldm
    from dpsearch.storage import Store
    from dpsearch.tracking import _log_final_model, sweep_addresses

    services.up()
    s = services.load()
    for k, v in s.client_env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    final_dir = Store(f"s3://{s.bucket}/sweeps/registered/dpsearch/final")
    for f in Path(tiny_model_dir).rglob("*"):
        if f.is_file():
            final_dir.write_bytes(f"model/{f.relative_to(tiny_model_dir)}", f.read_bytes())
    grid = io.BytesIO()
    Image.new("RGB", (8, 8)).save(grid, format="PNG")
    final_dir.write_bytes("release/grid.png", grid.getvalue())
    final_dir.write_text("release/DATA_CARD.md", "# card")
    final = {"config": {"layers": "2-5", "batch": 100}, "free": {"guidance": 1.0, "steps": 3}, "n_release": 10, "minutes": 1,
             "free_candidates": [{"guidance": 1.0, "steps": 3, "objective": 0.7}], "model": final_dir.uri("model"),
             "release": final_dir.uri("release")}
    c, pid = _fake_sweep(s.mlflow_uri, "registered sweep/1", final=final)

    exp = c.get_experiment_by_name("registered sweep/1")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = c.get_run(pid)
    assert run.data.tags["final.model"] == final["model"]  # the S3 pointer stays
    logged = {a.path for a in c.list_artifacts(pid, "final_model")}
    assert {"final_model/HOW_TO_LOAD.md", "final_model/unet", "final_model/vae"} <= logged
    import mlflow  # as HOW_TO_LOAD.md says

    local = mlflow.artifacts.download_artifacts(run_id=pid, artifact_path="final_model", dst_path=str(tmp_path),
                                                tracking_uri=s.mlflow_uri)
    how = (Path(local) / "HOW_TO_LOAD.md").read_text()
    assert f'run_id="{pid}"' in how and "from dpsearch.models import load_ldm; model = load_ldm(path)" in how
    model = load_ldm(local)
    assert model.meta == load_ldm(tiny_model_dir).meta
    name = "registered-sweep-1"
    assert run.data.tags["final.registered_model"] == f"models:/{name}/1"
    version = c.get_model_version(name, "1")
    assert version.run_id == pid and version.source.endswith("/final_model")
    assert {a.path for a in c.list_artifacts(pid, "comparison")} == {
        "comparison/layers_heatmap.png", "comparison/objective_vs_oracle.png"}

    # a registry that refuses: a warning, the model stays logged, nothing raised
    def refuse(*a, **k):
        from mlflow.exceptions import MlflowException

        raise MlflowException("FEATURE_DISABLED: model registry is not supported by this server")

    monkeypatch.setattr(type(c), "create_model_version", refuse)
    with caplog.at_level(logging.WARNING, logger="dpsearch.tracking"):
        _log_final_model(c, pid, final)
    assert "not registered (FEATURE_DISABLED" in caplog.text

    # private selection: no per-trial pictures on the sweep's run
    private = {"released": {"eps": 5.0, "delta": 1e-6, "mode": "private-selection"},
               "tracking_store": {"eps": 9.0, "delta": 1e-6}}
    c2, pid2 = _fake_sweep(s.mlflow_uri, "private pics", report=private)
    assert "comparison" not in {a.path for a in c2.list_artifacts(pid2)}

    # the UI's addresses: the training view and the two saved views they open
    where = sweep_addresses(s.mlflow_uri, "registered sweep/1")
    assert where["runs"].endswith(f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                                  f"&viewStateShareKey=dpsearch-trials")
    tags = c.get_experiment(exp.experiment_id).tags
    compare = json.loads(json.loads(tags["mlflow.sharedViewState.dpsearch-compare"])["state"])
    chart = compare["compareRunCharts"][0]
    assert chart["type"] == "PARALLEL" and chart["selectedMetrics"] == ["oracle/accuracy", "objective"]
    assert chart["selectedParams"] == ["layer_a", "layer_b", "clip", "batch", "lr", "epochs"]


def _look_without_a_click(uri: str, name: str, children, shots: str) -> None:
    """A fresh headless Chromium opens the sweep's addresses and clicks nothing: the training view (not GenAI's), the
    trials grouped under the sweep's run with the columns that matter, then the parallel-coordinates chart."""
    from tests.browser import chromium, wait_for_text

    from dpsearch.tracking import sweep_addresses

    where = sweep_addresses(uri, name)
    names = [c.info.run_name for c in children]
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium(2000, 1000) as browser:
        browser.get(where["runs"])
        text = wait_for_text(browser, ["Model training", "Group by: mlflow.parentRunId", "objective", "layer_a",
                                       "layer_b", "clip", "batch", *names])
        nav = browser.find_element("css selector", "nav").text.split("\n")
        assert {"Runs", "Models", "Model registry"} <= set(nav), nav  # the model-training side menu
        assert not {"Overview", "Observability", "Evaluation"} & set(nav), nav  # not GenAI's
        rows = sorted(browser.find_elements("css selector", ".ag-pinned-left-cols-container .ag-row"),
                      key=lambda r: int(r.get_attribute("row-index")))
        labels = [r.text.split("\n") for r in rows]
        assert any(x.startswith("Group: ") for x in labels[0]) and str(len(names)) in labels[0]  # the sweep's trials
        objective = {c.info.run_name: c.data.metrics.get("objective", -1e9) for c in children}
        shown = [objective[next(n for n in names if n in r)] for r in labels[1:1 + len(names)]]  # open, no click
        assert sorted(shown, reverse=True) == shown == sorted(objective.values(), reverse=True)  # best first
        assert "Additional runs" in labels[1 + len(names)]  # the sweep's own run
        for c in children:
            assert c.data.params["layer_b"] in text and c.data.params["clip"] in text
        browser.save_screenshot(str(ARTIFACTS / f"{shots}-trials.png"))

        browser.get(where["trials_compared"])
        wait_for_text(browser, ["Model training", "Sweep comparison", "Parallel Coordinates", *names])
        labels = [e.text for e in browser.find_elements("css selector", ".parcoords text.label")]
        assert labels[-2:] == ["oracle/accuracy", "objective"] and labels[:3] == ["layer_a", "layer_b", "clip"], labels
        browser.save_screenshot(str(ARTIFACTS / f"{shots}-compare.png"))


@pytest.mark.e2e
def test_mlflow_ui_opens_a_sweep_in_the_training_view_with_its_trials_and_objective_without_a_click():
    from mlflow import MlflowClient

    services.up()
    uri = services.load().mlflow_uri
    _fake_sweep(uri, "ui look")
    _, children = _children(MlflowClient(uri), "ui look")
    _look_without_a_click(uri, "ui look", children, "mlflow-ui-fresh")
