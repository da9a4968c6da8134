"""Real Ray Tune + Optuna sweeps on the smoke space with a tiny pretrained model (seconds per trial)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpsearch.cli import main
from dpsearch.config import default_delta
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
def test_sweep_runs_trials_concurrently_under_one_eps_and_survives_a_failing_trial(tiny_model_dir, tmp_path, monkeypatch):
    # lr 1e30 makes a trial diverge (NaN loss → FloatingPointError); the sweep must record it and go on.
    monkeypatch.setenv("DPSEARCH_CPUS", "2")  # two trials at once need two of Ray's CPUs (the suite's workers get 1)
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
    assert all(r["eps"] <= 5.0 and r["delta"] == done[0]["delta"] == default_delta(400) for r in done)
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
    cmd = [sys.executable, "-m", "dpsearch.cli", "sweep", "--space", space, "--eps-per-trial", "5", "--trials", "2",
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
    assert main(base + ["--resume", "nope", "--warm-start"]) == 2
    assert "a resumed sweep keeps its own" in capsys.readouterr().err
    assert main(base + ["--eps-per-trial", "3", "--warm-start"]) == 2  # no final run to start
    assert "releases the selected trial's model itself" in capsys.readouterr().err
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
    from dpsearch.search.tuner import tune_config

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
                storage=str(storage), tracking="none", progress=False, release=False)  # the trials' count is the subject
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

    from dpsearch.privacy.slices import hash_share

    space = load_space("smoke")
    full = load_dataset("mnist")[0]
    share = {"keep": space.n_private / len(full), "salt": "share-salt"}
    private = hash_share(full, share["keep"], share["salt"])
    prints = {"private": private_fingerprint(private.images, private.labels, salt="fp-salt"), "salt": "fp-salt",
              "model": files_fingerprint(pack_model(tiny_model_dir)), "space": text_fingerprint(space.model_dump_json())}
    prints[changed] = "0" * 64
    opts = {**asdict(SweepOptions(eps=5.0, space="smoke", name="f", model=str(tiny_model_dir))),
            "val_eps": 5.0, "storage": str(tmp_path), "tracking": None}
    meta = tmp_path / "f" / "dpsearch"
    meta.mkdir(parents=True)
    (meta / "sweep.json").write_text(json.dumps({"options": opts, "n_private": 400, "fingerprints": prints,
                                                 "share": share, "space": json.loads(space.model_dump_json())}))
    with pytest.raises(ConfigError, match=message):
        run_sweep(SweepOptions(storage=str(tmp_path), tracking="none", progress=False), resume="f")


def test_fingerprints_are_salted_per_sweep():
    """One machine key would give every sweep on the same data the same fingerprint, linking them."""
    import torch

    from dpsearch.fingerprints import private_fingerprint

    x, y = torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long)
    assert private_fingerprint(x, y, salt="a") != private_fingerprint(x, y, salt="b")
    assert private_fingerprint(x, y, salt="a") == private_fingerprint(x, y, salt="a")


@pytest.mark.e2e
def test_a_retried_trial_is_counted_once_per_attempt(tiny_model_dir, tmp_path):
    """--retry-errored draws the failed trial's noise again: each attempt is one more run in the released ε."""
    space = _space(tmp_path, lr={"value": 1e30}, epochs={"value": 1}, batch={"value": 100})  # every trial diverges
    storage = tmp_path / "sweeps"
    first = run_sweep(SweepOptions(eps=5.0, space=space, trials=2, concurrency=1, sampler="random",
                                   model=str(tiny_model_dir), storage=str(storage), name="e", tracking="none",
                                   progress=False, release=False))
    assert [r["status"] for r in first.rows] == ["ERROR", "ERROR"]
    assert first.extra["privacy"]["trials_started"] == 2
    res = run_sweep(SweepOptions(progress=False, storage=str(storage), tracking="none"), resume="e",
                    retry_errored=True)
    rep = res.extra["privacy"]
    assert rep["trials_started"] == 4 and rep["released"]["trials"] == 4  # 2 trials × 2 attempts
    assert rep["released"]["eps"] > first.extra["privacy"]["released"]["eps"]


def test_retrying_under_private_selection_is_refused(tmp_path):
    from dataclasses import asdict

    from dpsearch.config import ConfigError
    from dpsearch.space import load_space

    opts = {**asdict(SweepOptions(eps=5.0, space="smoke", name="p", sampler="random", private_selection="geometric",
                                  mean_trials=3.0)), "storage": str(tmp_path), "tracking": None}
    meta = tmp_path / "p" / "dpsearch"
    meta.mkdir(parents=True)
    (meta / "sweep.json").write_text(json.dumps({"options": opts, "n_private": 400,
                                                 "space": json.loads(load_space("smoke").model_dump_json())}))
    with pytest.raises(ConfigError, match="retrying an errored trial would run one of its K"):
        run_sweep(SweepOptions(storage=str(tmp_path), tracking="none", progress=False), resume="p", retry_errored=True)


def _release_files(final: Path) -> dict[str, str]:
    return {str(f.relative_to(final)): f.read_text() for f in final.rglob("*")
            if f.is_file() and f.suffix in (".json", ".md")}


@pytest.mark.e2e
def test_a_private_selection_release_carries_no_k_ids_statuses_or_rows(tiny_model_dir, tmp_path, capsys):
    space = _space(tmp_path, epochs={"value": 1}, batch={"value": 100})
    storage = tmp_path / "sweeps"
    res = run_sweep(SweepOptions(eps=3.0, space=space, concurrency=1, sampler="random", private_selection="geometric",
                                 mean_trials=1.5, model=str(tiny_model_dir), storage=str(storage), name="ps",
                                 tracking="none", progress=False))
    k = len(res.rows)
    ids = [r["trial"] for r in res.rows]
    files = _release_files(storage / "ps" / "dpsearch" / "final")
    assert "release/DATA_CARD.md" in files and "result.json" in files
    for name, text in files.items():
        for leak in [*ids, '"trials_started"', "trials_rows", '"status"', "ERROR", "TERMINATED"]:
            assert leak not in text, (name, leak)
        assert f'"trials": {k}' not in text, name
    card = json.loads(files["release/card.json"]) if "release/card.json" in files else {}
    rep = res.extra["privacy"]
    assert card.get("privacy", {}).get("eps", rep["released"]["eps"]) == pytest.approx(rep["released"]["eps"])
    assert rep["released"]["mode"] == "geometric" and rep["tracking_store"]["trials"] == k
    capsys.readouterr()
    assert main(["privacy", "report", str(storage / "ps")]) == 0
    out = capsys.readouterr().out
    assert not any(i in out for i in ids) and "K = " not in out
    from dpsearch.search import format_summary

    printed = format_summary(res)  # what `dpsearch sweep` prints at the end
    assert not any(i in printed for i in ids) and "ERROR" not in printed and "--tracking-store" in printed
    # the HTML report shows every trial: it is the tracking store's page and states that figure, not the release's
    assert main(["report", str(storage / "ps"), "--out", str(tmp_path / "ps.html")]) == 0
    page = (tmp_path / "ps.html").read_text()
    assert "TRACKING STORE" in page and f"{rep['tracking_store']['eps']:.3f}" in page and "not for publication" in page


@pytest.mark.e2e
def test_a_final_stage_run_again_reuses_its_model_and_counts_its_counts_again(tiny_model_dir, tmp_path):
    """Disjoint slices with the counting objective: the final stage dies after its free candidates were counted
    (result.json missing); the resumed stage reuses the trained final model (no second run on the final slice)
    and its second round of counts is composed into the validation part."""
    space = _space(tmp_path, epochs={"value": 1}, batch={"value": 100})
    storage = tmp_path / "sweeps"
    opts = dict(space=space, trials=2, concurrency=1, model=str(tiny_model_dir), storage=str(storage),
                tracking="none", progress=False)
    first = run_sweep(SweepOptions(eps_total=5.0, name="f2", **opts))
    meta = storage / "f2" / "dpsearch"
    assert json.loads((meta / "attempts.json").read_text()) == {"final": 1, "free": 1}
    val_once = first.extra["privacy"]["released"]["parts"][1]["eps"]
    (meta / "final" / "result.json").unlink()
    again = run_sweep(SweepOptions(progress=False, storage=str(storage), tracking="none"), resume="f2")
    assert json.loads((meta / "attempts.json").read_text()) == {"final": 1, "free": 2}
    parts = {p["part"]: p for p in again.extra["privacy"]["released"]["parts"]}
    assert parts["validation"]["eps"] > val_once and parts["final"]["eps"] <= 5.0 * 1.001


def test_sweep_eps_is_the_released_models_and_plan_trains_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """`dpsearch sweep --eps E` means the released model's ε (the disjoint-slice design), as `run --eps` means the
    model's; `--plan` prints that design and its guarantee and exits without training or storing anything."""
    from dpsearch.search import wall_time

    probed, real = [], wall_time.probe_seconds

    def probe_once(model_dir, space):  # the first plan's estimate is checked; the others check the design's text
        if not probed:
            probed.append(real(model_dir, space))
        return probed[0]

    monkeypatch.setattr(wall_time, "probe_seconds", probe_once)
    raw = yaml.safe_load(SMOKE.read_text())
    raw["accountant"] = "rdp"  # the per-trial ε solve: seconds with RDP
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    base = ["sweep", "--space", str(tmp_path / "space.yaml"), "--model", str(tiny_model_dir), "--storage",
            str(tmp_path / "sweeps"), "--tracking", "none", "--quiet", "--plan"]
    assert main(base + ["--eps", "3"]) == 0
    out = capsys.readouterr().out
    assert "plan only" in out and "disjoint slices" in out and "released model: (ε = 3, δ = " in out
    minutes = re.search(r"estimated wall time on this machine: (\d+) min \(trials (\d+), final stage (\d+)\)", out)
    assert minutes and int(minutes[1]) >= int(minutes[2]), out
    assert main(base) == 0  # no --eps: the space's eps is the released one
    assert "released model: (ε = 5, δ = " in capsys.readouterr().out
    assert main(base + ["--eps-total", "4"]) == 0  # the old name
    assert "released model: (ε = 4, δ = " in capsys.readouterr().out
    assert main(base + ["--eps-per-trial", "3", "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "per trial: every trial at ε = 3" in out and "all 2 trials of an adaptive search" in out
    assert main(base + ["--eps", "3", "--eps-per-trial", "3"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.e2e
def test_a_selected_lora_trial_is_retrained_and_released_as_lora(tiny_model_dir, tmp_path):
    """The final stage retrains the selected trial's own Tune config: a LoRA trial stays LoRA, with its rank."""
    space = _space(tmp_path, epochs={"value": 1}, batch={"value": 100}, method={"value": "lora"},
                   rank={"choice": [2]})
    res = run_sweep(SweepOptions(eps_total=5.0, space=space, trials=1, concurrency=1, model=str(tiny_model_dir),
                                 storage=str(tmp_path / "sweeps"), name="lora", tracking="none", progress=False))
    final = res.extra["final"]
    assert res.best["method"] == "lora r2" and res.best["config"]["method"] == "lora"
    assert final["config"]["method"] == "lora" and int(final["config"]["rank"]) == 2
    assert final["privacy"]["method"] == "lora" and final["privacy"]["lora_rank"] == 2
    card = (tmp_path / "sweeps" / "lora" / "dpsearch" / "final" / "release" / "DATA_CARD.md").read_text()
    assert "lora" in card.lower()
    # the release, one command away: by the sweep's name, verified file by file
    out = tmp_path / "pulled"
    assert main(["pull", "lora", "--storage", str(tmp_path / "sweeps"), "--out", str(out)]) == 0
    assert (out / "release" / "synthetic.npz").exists() and (out / "model" / "unet").is_dir()
    assert (out / "release" / "DATA_CARD.md").read_text() == card and not (out / "trained").exists()
    assert f"(ε = {final['released']['eps']:.3f}" in (out / "PRIVACY_REPORT.txt").read_text()
    npz = tmp_path / "sweeps" / "lora" / "dpsearch" / "final" / "release" / "synthetic.npz"
    npz.write_bytes(npz.read_bytes()[:-10])  # a truncated file in storage is caught, not handed over
    assert main(["pull", "lora", "--storage", str(tmp_path / "sweeps"), "--out", str(tmp_path / "again")]) == 2
