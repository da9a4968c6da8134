"""The embedded S3 (SeaweedFS) and MLflow servers, real, on loopback."""

import os
import socket
import time
from pathlib import Path

import boto3
import pytest

from dpsearch import services
from dpsearch.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def svc_dir(tmp_path):
    yield tmp_path / "svc"
    services.down(tmp_path / "svc")


def _session_commands(sid: int) -> list[str]:
    """The command lines of the processes in session `sid`."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) == sid:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            pass
    return out


def test_up_is_idempotent_serves_s3_and_mlflow_and_down_stops_them(svc_dir, capsys):
    s3, ml = _free_port(), _free_port()
    t = time.time()
    assert main(["services", "up", "--dir", str(svc_dir), "--s3-port", str(s3), "--mlflow-port", str(ml)]) == 0
    cold = time.time() - t
    out = capsys.readouterr().out
    assert "started in" in out and f"127.0.0.1:{s3}" in out and f"127.0.0.1:{ml}" in out
    s = services.load(svc_dir)
    pids = (s.s3_pid, s.mlflow_pid)
    assert main(["services", "up", "--dir", str(svc_dir), "--s3-port", str(s3), "--mlflow-port", str(ml)]) == 0
    assert "already running" in capsys.readouterr().out
    assert (services.load(svc_dir).s3_pid, services.load(svc_dir).mlflow_pid) == pids
    server = _session_commands(s.mlflow_pid)  # the MLflow server and what it started (its own session)
    assert any("mlflow server" in c for c in server)
    assert not any("huey" in c or "_job_runner" in c for c in server), server  # MLflow's job runner is off
    env = s.client_env()
    c = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    assert "dpsearch" in [b["Name"] for b in c.list_buckets()["Buckets"]]
    assert oct((svc_dir / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert oct(svc_dir.stat().st_mode & 0o777) == "0o700"  # keys, MLflow's database, every sweep's artifacts
    import json
    import urllib.request

    with urllib.request.urlopen(f"{s.mlflow_uri}/ajax-api/3.0/mlflow/ui-telemetry", timeout=10) as r:
        assert json.loads(r.read())["disable_ui_telemetry"] is True  # no "MLflow collects usage data" in the UI
    assert main(["services", "status", "--dir", str(svc_dir)]) == 0
    assert main(["services", "down", "--dir", str(svc_dir)]) == 0
    assert not services._alive(pids[0]) and not services._alive(pids[1])
    assert main(["services", "status", "--dir", str(svc_dir)]) == 1
    print(f"services up from cold: {cold:.1f} s")


def test_port_in_use_is_a_clear_error_and_starts_nothing(svc_dir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["services", "up", "--dir", str(svc_dir), "--s3-port", str(port),
                     "--mlflow-port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "--s3-port" in err
    assert services.load(svc_dir) is None


def test_unreachable_storage_and_tracking_fail_before_training(tmp_path, capsys, tiny_model_dir):
    dead = _free_port()
    # --eps-per-trial: the services are checked after the plan, and the per-trial protocol plans without the ε solve
    base = ["sweep", "--space", "smoke", "--eps-per-trial", "5", "--model", str(tiny_model_dir), "--quiet"]
    assert main(base + ["--storage", str(tmp_path / "s"), "--tracking", f"http://127.0.0.1:{dead}"]) == 2
    assert "MLflow tracking server" in capsys.readouterr().err
    import os

    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{dead}"
    try:
        assert main(base + ["--storage", "s3://nobucket/x", "--tracking", "none"]) == 2
    finally:
        if old is None:
            os.environ.pop("AWS_ENDPOINT_URL")
        else:
            os.environ["AWS_ENDPOINT_URL"] = old
    assert "not reachable or not writable" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "example.org"])
def test_a_host_beyond_loopback_is_refused_unless_asked_for(host, svc_dir, capsys):
    assert main(["services", "up", "--dir", str(svc_dir), "--host", host]) == 2
    assert "--allow-remote" in capsys.readouterr().err and services.load(svc_dir) is None
    services.check_host(host, allow_remote=True)  # explicitly asked: allowed, with a warning
    services.check_host("127.0.0.1")
    services.check_host("::1")
