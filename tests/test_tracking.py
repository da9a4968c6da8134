"""A real smoke sweep against the embedded S3 + MLflow servers: parent and child runs, only useful
fields, no secrets anywhere, checkpoints on S3, and a resume from S3 alone."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

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
    assert {"privacy_report.json", "privacy_report.txt", "summary.json", "search_space.json", "objective_vs_oracle.png"} <= {
        a.path for a in client.list_artifacts(parent[0].info.run_id)}

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
def test_mlflow_ui_shows_the_child_runs_with_their_params(tracked):
    """Headless Chromium (Debian's, driven by Selenium + chromedriver) does what a user does: opens the
    sweep's experiment, expands the sweep's parent run, adds the layer-range, clip and batch columns, then
    compares the trials. Screenshots land in test-artifacts/ for a person to look at."""
    from mlflow import MlflowClient

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from tests.browser import chromium, click_text, container_of, wait_for_text

    s = services.load()
    client = MlflowClient(s.mlflow_uri)
    exp = client.get_experiment_by_name("tracked")
    _, children = _children(client, "tracked")
    names = [c.info.run_name for c in children]
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium(2000, 1000) as browser:
        browser.get(f"{s.mlflow_uri}/#/experiments/{exp.experiment_id}/runs")
        wait_for_text(browser, ["Training runs", "sweep tracked"])  # the training-runs view, not GenAI's
        for close in browser.find_elements("css selector", "button[aria-label='Close']"):
            close.click()  # the assistant side panel
        for expander in browser.find_elements("css selector", "button[data-component-id*='runnamecellrenderer']"):
            expander.click()  # children are nested under the sweep's parent run
        wait_for_text(browser, names)
        click_text(browser, "Columns")
        wait_for_text(browser, ["Parameters ("])
        menu = container_of(browser, "Reset to defaults")
        for name in ("Dataset", "Source", "Models", "layer_a", "layer_b", "clip", "batch", "objective"):
            click_text(browser, name, within=menu)  # untick three attribute columns, tick the ones a user compares
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()  # closes the menu
        table = wait_for_text(browser, ["layer_a", "layer_b", "clip", "batch", "objective", *names])
        for c in children:
            assert c.data.params["batch"] in table and c.data.params["layer_a"] in table
        browser.save_screenshot(str(ARTIFACTS / "mlflow-ui-trials.png"))

        ids = json.dumps([c.info.run_id for c in children])
        browser.get(f"{s.mlflow_uri}/#/compare-runs?runs={quote(ids)}&experiments={quote(json.dumps([exp.experiment_id]))}")
        text = wait_for_text(browser, ["Parallel Coordinates Plot", "layer_a", "layer_b", "clip", "objective", *names])
        for c in children:  # each trial's own layer range is on the page
            assert c.data.params["layers"] in text
        browser.save_screenshot(str(ARTIFACTS / "mlflow-ui-compare.png"))
    print(f"screenshots: {ARTIFACTS / 'mlflow-ui-trials.png'}, {ARTIFACTS / 'mlflow-ui-compare.png'}")


@pytest.mark.e2e
def test_ui_prints_where_the_sweeps_trials_are_side_by_side(tracked, capsys):
    from urllib.parse import unquote

    from mlflow import MlflowClient

    assert main(["ui", "tracked"]) == 0
    out = unquote(capsys.readouterr().out)
    _, children = _children(MlflowClient(services.load().mlflow_uri), "tracked")
    assert "#/compare-runs?runs=" in out and all(c.info.run_id in out for c in children)
    assert "/runs" in out and "layer_a, layer_b, clip, batch, objective" in out


@pytest.mark.e2e
def test_slices_sweep_releases_a_model_at_the_total_and_links_it_from_the_parent_run(tiny_model_dir, embedded_services_dir, tmp_path):
    """--eps-total on disjoint slices with the counting objective, against the real S3 and MLflow: the reference
    configuration as trial 1, trials on the tuning slice scored by noisy counts on the validation slice, the
    selected configuration trained again on the final slice, free guidance chosen by counts, the release and
    its card. (The validation generator is exercised by the --eps sweeps above.)"""
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
                                 sampler="random", seed=2, model=str(tiny_model_dir), name="sliced", progress=False))
    rep, final = res.extra["privacy"], res.extra["final"]
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
