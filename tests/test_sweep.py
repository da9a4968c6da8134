"""Real Ray Tune + Optuna sweeps on the smoke space with a tiny pretrained model (seconds per trial)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpsearch.cli import main
from tests.cluster_hosts import kill_tree
from dpsearch.search import SweepOptions, run_sweep

SMOKE = Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml"


def _space(tmp_path, **params):
    """The smoke space with some params replaced."""
    space = yaml.safe_load(SMOKE.read_text())
    space["params"].update(params)
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(space))
    return str(p)


@pytest.fixture(autouse=True)
def _no_stray_ray():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.e2e
def test_sweep_runs_trials_concurrently_under_one_eps_and_survives_a_failing_trial(tiny_model_dir, tmp_path):
    # lr 1e30 makes a trial diverge (NaN loss → FloatingPointError); the sweep must record it and go on.
    space = _space(tmp_path, lr={"choice": [5e-4, 1e30]})
    res = run_sweep(SweepOptions(eps=5.0, space=space, trials=5, concurrency=2, sampler="random", seed=3,
                                 model=str(tiny_model_dir), storage=str(tmp_path / "sweeps"), name="s", progress=False))
    by_status = {}
    for r in res.rows:
        by_status.setdefault(r["status"], []).append(r)
    assert len(res.rows) == 5
    assert by_status.get("ERROR"), "the diverging configuration was not drawn: pick another seed"
    assert all("diverged" in r["error"] or "FloatingPointError" in r["error"] for r in by_status["ERROR"])
    done = by_status["DONE"]
    assert len(done) >= 2
    # every finished trial is (ε, δ)-DP for the same target, each with its own σ
    assert all(r["eps"] <= 5.0 and r["delta"] == done[0]["delta"] == 1e-3 for r in done)
    assert all(0 <= r["objective"] <= 1 and 0 <= r["oracle_accuracy"] <= 1 for r in done)
    assert res.rows[0]["objective"] == max(r["objective"] for r in done)  # sorted by objective
    assert res.validation_privacy["eps"] <= 5.0
    best = Path(res.best["checkpoint"])
    assert (best / "model" / "unet").is_dir() and (best / "samples.png").exists()
    assert json.loads((best / "privacy.json").read_text())["layers"] == res.best["layers"]
    assert (tmp_path / "sweeps" / "s" / "dpsearch" / "validation.npz").exists()


@pytest.mark.e2e
def test_sweep_killed_after_first_checkpoint_resumes_and_finishes(tiny_model_dir, tmp_path):
    space = _space(tmp_path, epochs={"value": 3}, batch={"value": 50})
    storage = tmp_path / "sweeps"
    cmd = [sys.executable, "-m", "dpsearch.cli", "sweep", "--space", space, "--eps", "5", "--trials", "2",
           "--concurrency", "1", "--model", str(tiny_model_dir), "--storage", str(storage), "--name", "k", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while not list((storage / "k").glob("*/checkpoint_*")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.5)
    finally:
        kill_tree(proc)
    vset = storage / "k" / "dpsearch" / "validation.npz"
    made = vset.stat().st_mtime
    assert main(["sweep", "--resume", "k", "--storage", str(storage), "--quiet"]) == 0
    summary = json.loads((storage / "k" / "dpsearch" / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["DONE", "DONE"]
    assert all(r["eps"] <= 5.0 for r in summary["rows"])
    assert vset.stat().st_mtime == made  # the same DP validation set, not a second one


def test_sweep_rejects_bad_values_before_starting_ray(tiny_model_dir, tmp_path, capsys):
    base = ["sweep", "--space", "smoke", "--model", str(tiny_model_dir), "--storage", str(tmp_path), "--quiet"]
    assert main(base + ["--eps", "0"]) == 2
    assert "--eps: ε must be a positive number" in capsys.readouterr().err
    assert main(base + ["--trials", "0"]) == 2
    assert "--trials must be ≥ 1" in capsys.readouterr().err
    assert main(base + ["--resume", "nope"]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err
    big = _space(tmp_path, batch={"choice": [100, 100000]})
    assert main(base[:2] + [big] + base[3:] + ["--eps", "5"]) == 2
    assert "larger than the private set" in capsys.readouterr().err
    wide = _space(tmp_path, layers={"low": 1, "high": 9})
    assert main(base[:2] + [wide] + base[3:] + ["--eps", "5"]) == 2
    assert "outside this model's attention modules 1-7" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/dpsearch/sweep.json"))  # nothing half-written


@pytest.mark.parametrize("extra, message", [
    (["--private-selection", "geometric", "--mean-trials", "5"], "needs --sampler random: TPE picks each trial"),
    (["--private-selection", "geometric", "--mean-trials", "5", "--sampler", "random", "--scheduler", "asha"],
     "needs --scheduler none"),
    (["--private-selection", "poisson", "--sampler", "random"], "needs --mean-trials"),
    (["--mean-trials", "5"], "only applies with --private-selection"),
])
def test_private_selection_is_refused_where_its_bound_does_not_hold(extra, message, tmp_path, capsys):
    assert main(["sweep", "--space", "smoke", "--eps", "5", "--storage", str(tmp_path), "--quiet", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_trials_on_other_nodes_get_the_storage_endpoint_but_never_credentials(monkeypatch):
    from dpsearch.search.resources import NODE_ENV, node_env

    for k in NODE_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.internal:8333")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-runtime-env")
    env = node_env("auto")["env_vars"]
    assert env == {"AWS_ENDPOINT_URL": "http://s3.internal:8333", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert node_env(None) is None  # local workers inherit the driver's environment


def test_tpe_models_scores_after_half_the_budget_not_after_optunas_ten():
    from dpsearch.space import load_space
    from dpsearch.search.options import tpe_startup_trials
    from dpsearch.search.runner import tune_config

    assert [tpe_startup_trials(k) for k in (1, 4, 8, 30)] == [2, 2, 4, 10]
    cfg = tune_config(SweepOptions(trials=8, concurrency=2), load_space("smoke"))
    assert cfg.search_alg._sampler._n_startup_trials == 4  # an 8-trial "TPE" sweep is not random search


def test_auto_concurrency_is_one_trial_per_core_capped_by_memory_and_trials(monkeypatch):
    import ray

    from dpsearch.search.resources import auto_concurrency, trial_resources

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=3, num_gpus=0, _memory=7 * 2**30, include_dashboard=False, log_to_driver=False)
    try:
        assert auto_concurrency(8) == 2  # 3 cores, but 7 GiB holds two 3-GiB trials
        assert auto_concurrency(1) == 1
        res = trial_resources(SweepOptions(concurrency=3))
        assert (res["cpu"], res["threads"], res["gpu"]) == (1, 1, 0)  # one thread per trial: no oversubscription
        assert res["val_cpu"] == 3  # the validation generator runs alone and gets the whole node
    finally:
        ray.shutdown()


@pytest.mark.e2e
def test_a_sweep_restarted_without_ray_state_still_counts_the_first_trials(tiny_model_dir, tmp_path):
    space = _space(tmp_path, epochs={"value": 1}, batch={"value": 100})
    storage = tmp_path / "sweeps"
    opts = dict(eps=5.0, space=space, trials=2, concurrency=1, sampler="random", model=str(tiny_model_dir),
                storage=str(storage), tracking="none", progress=False)
    first = run_sweep(SweepOptions(**opts, name="r"))
    assert first.extra["privacy"]["released"]["trials"] == 2
    (storage / "r" / "tuner.pkl").unlink()  # Ray's state is gone: a fresh Tuner has to start
    res = run_sweep(SweepOptions(progress=False, storage=str(storage), tracking="none"), resume="r")
    rep = res.extra["privacy"]
    assert rep["trials_started"] == 4 and rep["released"]["trials"] == 4
    assert rep["released"]["eps"] > first.extra["privacy"]["released"]["eps"]


@pytest.mark.parametrize("changed, message", [("private", "its private data differs"), ("model", "its base model differs"),
                                              ("space", "its search space differs")])
def test_resume_refuses_other_data_model_or_space(changed, message, tiny_model_dir, tmp_path):
    from dataclasses import asdict

    from dpsearch.config import ConfigError
    from dpsearch.data import load_dataset
    from dpsearch.fingerprints import files_fingerprint, private_fingerprint, text_fingerprint
    from dpsearch.space import load_space
    from dpsearch.search.model_files import pack_model

    space = load_space("smoke")
    private = load_dataset("mnist")[0].subset(space.n_private, seed=0)
    prints = {"private": private_fingerprint(private.images, private.labels),
              "model": files_fingerprint(pack_model(tiny_model_dir)), "space": text_fingerprint(space.model_dump_json())}
    prints[changed] = "0" * 64
    opts = {**asdict(SweepOptions(eps=5.0, space="smoke", name="f", model=str(tiny_model_dir))),
            "val_eps": 5.0, "storage": str(tmp_path), "tracking": None}
    meta = tmp_path / "f" / "dpsearch"
    meta.mkdir(parents=True)
    (meta / "sweep.json").write_text(json.dumps({"options": opts, "n_private": 400, "fingerprints": prints,
                                                 "space": json.loads(space.model_dump_json())}))
    with pytest.raises(ConfigError, match=message):
        run_sweep(SweepOptions(storage=str(tmp_path), tracking="none", progress=False), resume="f")
