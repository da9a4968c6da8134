"""The cluster launcher files: valid against Ray's shipped schema, GPU workers from zero, no secrets."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import psutil
import pytest
import ray.autoscaler
import yaml

from dpsearch.paths import home
from tests.cluster_hosts import PID_NAMESPACES, free_port, kill_under, processes_under, short_tmpdir, start_sshd

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "local.yaml"])
def test_cluster_yaml_is_valid_for_ray_up(name):
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(cfg, SCHEMA)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))  # what `ray up` itself runs, defaults filled in


def test_aws_cluster_autoscales_gpu_workers_from_zero_with_declared_resources():
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    nodes = cfg["available_node_types"]
    gpu = [n for n in nodes.values() if n.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(n["min_workers"] == 0 and n["max_workers"] >= 1 for n in gpu)
    assert nodes[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    setup = "\n".join(cfg["setup_commands"])
    assert "torch==2.14.1" in setup and "torchvision==0.29.1" in setup and "dpsearch" in setup
    assert ".venv" in cfg["rsync_exclude"]  # the local virtualenv never goes to the nodes


def test_sweeps_on_these_clusters_know_how_many_gpus_the_autoscaler_can_add():
    from dpsearch.search.resources import autoscalable_gpus

    def gpus(name):
        return autoscalable_gpus(yaml.safe_load((CLUSTER / name).read_text()))

    assert gpus("cluster.yaml") >= 1 and gpus("fake_multinode.yaml") >= 2 and gpus("local.yaml") == 0


@pytest.mark.parametrize("name", ["cluster.yaml", "local.yaml", "fake_multinode.yaml"])
def test_no_secret_is_written_into_a_cluster_file(name):
    text = (CLUSTER / name).read_text()
    assert not re.search(r"(?i)(aws_secret_access_key|aws_access_key_id|secret_key|password|token)\s*[:=]", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id


# --- for real, on this machine ------------------------------------------------------------------
# Both tests start Ray from the command line the way users do, each with its own --temp-dir, and stop only
# the Ray processes under it (never a machine-wide `ray stop`, which would stop a user's other Ray jobs).

def _ray(venv_bin: Path, *args, env: dict, timeout: float = 600, cwd: Path | None = None) -> str:
    r = subprocess.run([str(venv_bin / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"ray {' '.join(args)} failed ({r.returncode}):\n{out[-6000:]}"
    return out


def _summary(name: str, storage: str) -> dict:
    from dpsearch.storage import Store

    return json.loads(Store(storage).child(name, "dpsearch").read_text("summary.json"))


@pytest.fixture
def ssh_host():
    root = short_tmpdir("dpsr-")
    host = start_sshd(root)
    yield host
    host.stop()
    kill_under(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(not PID_NAMESPACES, reason="no PID namespace can be made here: the ray up test runs serially")
def test_the_ssh_hosts_sessions_see_only_their_own_processes(ssh_host):
    """What lets `ray down` (its `ray stop` lists every process it can see) run beside other tests' Rays."""
    seen = ssh_host.ssh("ps -e -o pid=,comm=")
    assert seen.returncode == 0, seen.stderr
    pids = {int(line.split()[0]) for line in seen.stdout.splitlines()}
    assert os.getpid() not in pids and 1 in pids  # this test's process is invisible; sshd is the namespace's init
    assert "sshd" in {line.split()[1] for line in seen.stdout.splitlines() if int(line.split()[0]) == 1}
    assert len(pids) < 10, seen.stdout


# `ray down` runs `ray stop` on the head, this machine: every Ray it can see stops. With the head's sshd in a PID
# namespace of its own (cluster_hosts.PID_NAMESPACES) it sees only its own, and the test runs beside the others;
# where no namespace can be made it runs in the serial pass, alone.
@(pytest.mark.e2e if PID_NAMESPACES else pytest.mark.serial)
def test_ray_up_over_ssh_runs_a_sweep_then_ray_down_leaves_no_ray_process(ssh_host, tiny_model_dir, monkeypatch):
    """cluster/local.yaml against 127.0.0.1 over SSH: ray up, a smoke sweep through ray exec (MLflow runs on
    the shared server, checkpoints on S3), ray down. Token auth on, its token kept out of the real ~/.ray."""
    from mlflow import MlflowClient

    from dpsearch import services

    s, _ = services.up()
    venv, root = Path(sys.prefix), ssh_host.root
    real_token = Path.home() / ".ray" / "auth_token"
    token_before = real_token.read_bytes() if real_token.exists() else None
    launcher = root / "launcher"  # the HOME of the machine running `ray up`: its token, its ~/.ray
    launcher.mkdir()
    lenv = {**os.environ, "HOME": str(launcher), "PATH": f"{ssh_host.bin}:{venv / 'bin'}:{os.environ['PATH']}"}
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        lenv.pop(k, None)
    _ray(venv / "bin", "get-auth-token", "--generate", env=lenv)
    # The "node" has dpsearch installed already: its venv is this one (the YAML's pip line is skipped), and
    # its AWS credentials are in its standard AWS config, as on a real node.
    (ssh_host.home / "dpsearch-venv").symlink_to(venv)
    creds = s.client_env()
    key, secret = creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]
    (ssh_host.home / ".aws").mkdir()
    (ssh_host.home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    (ssh_host.home / ".aws" / "config").write_text("[default]\nregion = us-east-1\n")

    cfg = yaml.safe_load((CLUSTER / "local.yaml").read_text())
    cfg.update(cluster_name=f"dpsearch-{root.name}", max_workers=0,
               provider={"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
               auth={"ssh_user": ssh_host.user, "ssh_private_key": str(ssh_host.key)},
               setup_commands=[c for c in cfg["setup_commands"] if "pip install" not in c],
               # the YAML's `ray stop` would stop every Ray of this user on the machine: the test cleans up by path
               head_start_ray_commands=[c + f" --temp-dir={root}/ray --num-cpus=2" if "ray start" in c else c
                                        for c in cfg["head_start_ray_commands"] if c.strip() != "ray stop"])
    cfg_path = root / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    repo = CLUSTER.parent
    try:
        up = _ray(venv / "bin", "up", str(cfg_path), "-y", "--no-config-cache", env=lenv, cwd=repo)
        assert "dpsearch-venv/bin" in (ssh_host.home / ".bashrc").read_text()
        assert (ssh_host.home / ".ray" / "auth_token").read_bytes() == (launcher / ".ray" / "auth_token").read_bytes()
        assert (ssh_host.home / "dpsearch" / "dpsearch" / "search" / "sweep.py").exists()  # file_mounts synced the code
        assert not (ssh_host.home / "dpsearch" / ".venv").exists()
        name = f"cluster-{root.name[5:]}"
        cmd = (f"AWS_ENDPOINT_URL={s.s3_endpoint} MLFLOW_TRACKING_URI={s.mlflow_uri} DPSEARCH_HOME={home()} "
               f"dpsearch sweep --space smoke --eps 5 --trials 2 --sampler random --address auto "
               f"--model {tiny_model_dir} --storage s3://{s.bucket}/cluster --name {name} --quiet")
        out = _ray(venv / "bin", "exec", str(cfg_path), cmd, env=lenv, cwd=repo, timeout=900)
        status = _ray(venv / "bin", "exec", str(cfg_path), "ray status", env=lenv, cwd=repo)
        assert "Active" in status or "Healthy" in status, status
    finally:
        down = subprocess.run([str(venv / "bin" / "ray"), "down", str(cfg_path), "-y"], env=lenv, cwd=repo,
                              capture_output=True, text=True, timeout=300)
        Path("test-artifacts").mkdir(exist_ok=True)
        Path("test-artifacts/ray-up-ssh.log").write_text(
            "\n\n".join(x for x in ("$ ray up\n" + locals().get("up", ""), "$ ray exec dpsearch sweep\n" + locals().get("out", ""),
                                     "$ ray exec ray status\n" + locals().get("status", ""),
                                     "$ ray down\n" + down.stdout + down.stderr) if x))
    assert down.returncode == 0, down.stderr[-3000:]
    deadline = time.time() + 30
    while processes_under(root / "ray") and time.time() < deadline:
        time.sleep(1)
    assert not processes_under(root / "ray"), "ray down left Ray processes behind"
    assert (real_token.read_bytes() if real_token.exists() else None) == token_before  # the real ~/.ray untouched

    for k, v in s.client_env().items():  # this process reads S3 and MLflow as a client from here on
        monkeypatch.setenv(k, v)
    summary = _summary(name, f"s3://{s.bucket}/cluster")
    done = [r for r in summary["rows"] if r["status"] == "DONE"]
    assert len(done) == 2, summary["rows"]
    assert all(r["checkpoint"].startswith(f"s3://{s.bucket}/cluster/{name}/") for r in done)
    assert all(r["eps"] <= 5.0 + 1e-9 for r in done)
    from dpsearch.storage import Store

    for r in done:  # the checkpoint really is on S3, with its model and manifest
        ck = Store(r["checkpoint"])
        assert ck.exists("manifest.json") and ck.exists("model/dpsearch_model.json")
    client = MlflowClient(s.mlflow_uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(trials) == 2 and all("objective" in r.data.metrics for r in trials)


def test_fake_cluster_adds_gpu_nodes_for_a_sweep_and_spreads_its_trials(tiny_model_dir, monkeypatch):
    """cluster/fake_multinode.yaml: a CPU-only head, GPU workers from zero. The sweep sees GPUs it can
    autoscale to, so its trials ask for one each; the autoscaler adds nodes and the trials run on them."""
    from dpsearch import services

    s, _ = services.up()
    root, venv_bin = short_tmpdir("dpsf-"), Path(sys.prefix) / "bin"
    env = {**os.environ, **{k: v for k, v in s.client_env().items() if k.startswith("AWS_")},  # the nodes' own AWS config
           "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "disabled", "DPSEARCH_HOME": str(home()),
           "HOME": str(root)}  # no ~/.ray token written in the real home
    env.pop("RAY_ADDRESS", None)
    name, port = f"fake-{root.name[5:]}", free_port()
    # The head's address is given, not "auto": with other Rays on this machine (a parallel test worker's, a
    # user's), "auto" falls back to any Ray it detects.
    # Where `ray up` leaves the autoscaler config on a head node; the sweep reads its GPU node types there.
    boot = root / "ray_bootstrap_config.yaml"
    cfg = yaml.safe_load((CLUSTER / "fake_multinode.yaml").read_text())
    cfg["provider"]["gcs_address"] = f"127.0.0.1:{port}"  # the fake nodes join the head there
    boot.write_text(yaml.safe_dump(cfg))
    log = []
    try:
        log.append(_ray(venv_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                        "--num-gpus=0", f"--temp-dir={root}/ray", "--include-dashboard=false", "--disable-usage-stats",
                        f"--autoscaling-config={boot}", env=env))
        r = subprocess.run([str(venv_bin / "dpsearch"), "sweep", "--space", "smoke", "--eps-per-trial", "5", "--trials", "2",
                            "--concurrency", "2", "--sampler", "random", "--address", f"127.0.0.1:{port}", "--model",
                            str(tiny_model_dir), "--name", name, "--quiet"],
                           env=env, capture_output=True, text=True, timeout=900)
        log.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr[-4000:]
        log.append(_ray(venv_bin, "status", f"--address=127.0.0.1:{port}", env=env))
    finally:
        left = kill_under(root / "ray")  # the head and every fake node it added
        Path("test-artifacts").mkdir(exist_ok=True)
        Path("test-artifacts/fake-cluster.log").write_text("\n\n".join(log))
        shutil.rmtree(root, ignore_errors=True)
    assert left and not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    status = log[-1]
    assert re.search(r"\d+ gpu_worker", status), status  # the autoscaler added GPU nodes
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    for k, v in s.client_env().items():
        monkeypatch.setenv(k, v)
    rows = _summary(name, s.storage)["rows"]
    nodes = {r["node"] for r in rows}
    with open("test-artifacts/fake-cluster.log", "a") as f:
        f.write("\n\ntrials ran on: " + ", ".join(f"{r['trial']} node {r['node']} ({r['device']})" for r in rows) + "\n")
    assert [r["status"] for r in rows] == ["DONE", "DONE"], rows
    # The provider numbers the nodes it adds FAKE_HEAD_NODE_ID + 1, + 2, ...: one GPU each, so two nodes.
    assert len(nodes) == 2 and all(n[:-5] == FAKE_HEAD_NODE_ID[:-5] and n != FAKE_HEAD_NODE_ID for n in nodes), nodes
