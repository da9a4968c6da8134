"""The embedded services: an S3 server (SeaweedFS `weed mini`) and an MLflow tracking server whose
artifacts are proxied to a bucket on it. Both listen on 127.0.0.1 unless asked otherwise.

`up` is idempotent (a healthy running pair is reused), refuses a port in use with a clear message,
and never trusts `weed mini`'s default port: it moves silently when the port is taken, so the port
it really bound is read back from its own log and checked.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from dpsearch.config import ConfigError

BUCKET = "dpsearch"
# MLflow's usage telemetry (server, client and the UI's "MLflow collects usage data") off; SeaweedFS's is
# switched off by its -master.telemetry=false flag below.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# MLflow 3's server starts a job runner and ten Huey consumer processes by default (for its GenAI scorers and trace
# roll-ups, which dpsearch never submits): 24 s of CPU and ~3 s of wall at every `services up` on 2 cores, and ten
# Python processes holding memory for the server's lifetime. Measured with and without: up in 11.7 → 8.9 s, 11 → 2
# processes. A user who wants MLflow jobs on this server sets the variable to true in their environment (it wins).
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ServiceError(ConfigError):
    """A service cannot start or cannot be reached; the message says what to do."""


def services_dir() -> Path:
    return Path(os.environ.get("DPSEARCH_SERVICES_DIR", Path.home() / ".dpsearch" / "services"))


@dataclass
class Services:
    host: str
    s3_port: int
    mlflow_port: int
    s3_pid: int
    mlflow_pid: int
    bucket: str
    dir: str

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def storage(self) -> str:
        return f"s3://{self.bucket}/sweeps"

    def client_env(self) -> dict[str, str]:
        """What a client (a sweep, Ray workers, boto3, pyarrow) needs to reach these services."""
        key, secret = _credentials(Path(self.dir))
        return {**NO_TELEMETRY, "MLFLOW_TRACKING_URI": self.mlflow_uri, "AWS_ENDPOINT_URL": self.s3_endpoint,
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}


def _credentials(d: Path) -> tuple[str, str]:
    """The embedded S3 server's key pair, made once and kept in a 0600 file (never logged)."""
    f = d / "credentials.json"
    if not f.exists():
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"key": "dps" + secrets.token_hex(8), "secret": secrets.token_urlsafe(30)}, out)
    c = json.loads(f.read_text())
    return c["key"], c["secret"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise ServiceError(f"cannot find the `{name}` program; install dpsearch's dependencies (bash scripts/setup.sh)")
    return found


def _state_file(d: Path) -> Path:
    return d / "services.json"


def load(d: Optional[Path] = None) -> Optional[Services]:
    d = Path(d or services_dir())
    try:
        return Services(**json.loads(_state_file(d).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(s: Services) -> dict[str, bool]:
    return {"s3": _alive(s.s3_pid) and _http_ok(s.s3_endpoint),
            "mlflow": _alive(s.mlflow_pid) and _http_ok(s.mlflow_uri + "/health")}


def _wait(pred, seconds: float, what: str, log: Path) -> None:
    t = time.time() + seconds
    while time.time() < t:
        if pred():
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise ServiceError(f"{what} did not become ready within {seconds:.0f} s; its log {log} ends with:\n{tail}")


def check_host(host: str, allow_remote: bool = False) -> None:
    """Loopback only, unless the user asks for more: the servers hold every sweep's artifacts and the S3
    server accepts its key pair from anyone who can reach it."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return
    if not allow_remote:
        raise ServiceError(f"--host {host} would expose the S3 and MLflow servers beyond this machine; they listen on "
                           f"loopback only unless you pass --allow-remote as well (then protect them with a firewall)")
    import logging

    logging.getLogger(__name__).warning("the embedded S3 and MLflow servers will listen on %s: anyone who can reach it "
                                        "can read every sweep's artifacts; keep it behind a firewall", host)


def up(d: Optional[Path] = None, host: str = "127.0.0.1", s3_port: Optional[int] = None,
       mlflow_port: Optional[int] = None, timeout: float = 90, allow_remote: bool = False) -> tuple[Services, bool]:
    """Starts both services (or reuses a healthy running pair): (services, started_now).

    Ports default to DPSEARCH_S3_PORT / DPSEARCH_MLFLOW_PORT, else 8333 and 5000.
    """
    d = Path(d or services_dir())
    s3_port = int(s3_port or os.environ.get("DPSEARCH_S3_PORT", 8333))
    mlflow_port = int(mlflow_port or os.environ.get("DPSEARCH_MLFLOW_PORT", 5000))
    check_host(host, allow_remote)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)  # the S3 keys, the MLflow database and every sweep's artifacts live here
    cur = load(d)
    if cur is not None:
        h = healthy(cur)
        if all(h.values()):
            return cur, False
        _stop(cur)  # half-running: stop what is left and start clean
    for name, port in (("S3", s3_port), ("MLflow", mlflow_port)):
        if not _port_free(host, port):
            raise ServiceError(f"port {port} on {host} is in use, so the {name} server cannot start there; stop what "
                               f"uses it or choose another port (dpsearch services up --{name.lower()}-port N)")
    key, secret = _credentials(d)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "S3_BUCKET": BUCKET}
    (d / "s3").mkdir(exist_ok=True)
    s3_log = d / "s3.log"
    with open(s3_log, "w") as out:
        # weed mini's internal servers (master, volume, filer) would take fixed default ports and move
        # silently when those are taken: give them free ones, and switch off what dpsearch does not use.
        internal = [f"-{k}={_free_port(host)}" for k in ("master.port", "master.port.grpc", "volume.port",
                                                          "volume.port.grpc", "filer.port", "filer.port.grpc",
                                                          "s3.port.grpc", "admin.port", "admin.port.grpc")]
        weed = subprocess.Popen(
            [_bin("weed"), "mini", f"-dir={d / 's3'}", f"-ip={host}", f"-ip.bind={host}", f"-s3.port={s3_port}",
             *internal, "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
             "-master.telemetry=false", f"-bucket={BUCKET}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=d)
    try:
        _wait(lambda: "S3 Endpoint:" in s3_log.read_text(errors="replace"), timeout, "the S3 server (weed mini)", s3_log)
        m = re.search(r"S3 Endpoint:\s+http://[^:]+:(\d+)", s3_log.read_text(errors="replace"))
        bound = int(m.group(1)) if m else -1
        if bound != s3_port:
            raise ServiceError(f"weed mini moved its S3 server to port {bound} (port {s3_port} was taken); stop what "
                               f"uses {s3_port} or choose another port with --s3-port")
        _wait(lambda: _http_ok(f"http://{host}:{s3_port}"), timeout, "the S3 server", s3_log)
    except BaseException:
        _kill(weed.pid)
        raise
    ml_log = d / "mlflow.log"
    ml_env = {**NO_JOB_RUNNER, **env, "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:{s3_port}",
              "AWS_ENDPOINT_URL": f"http://{host}:{s3_port}", **NO_TELEMETRY}
    with open(ml_log, "w") as out:
        ml = subprocess.Popen(
            [_bin("mlflow"), "server", "--host", host, "--port", str(mlflow_port),
             "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--serve-artifacts",
             "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=ml_env, start_new_session=True, cwd=d)
    try:
        _wait(lambda: _http_ok(f"http://{host}:{mlflow_port}/health"), timeout, "the MLflow server", ml_log)
    except BaseException:
        _kill(ml.pid)
        _kill(weed.pid)
        raise
    s = Services(host, s3_port, mlflow_port, weed.pid, ml.pid, BUCKET, str(d))
    _state_file(d).write_text(json.dumps(asdict(s), indent=2))
    return s, True


def _kill(pid: int, grace: float = 10) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    t = time.time() + grace
    while time.time() < t and _alive(pid):
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _stop(s: Services) -> None:
    _kill(s.mlflow_pid)
    _kill(s.s3_pid)


def down(d: Optional[Path] = None) -> bool:
    """Stops the services; data stays in the directory. False when nothing was running."""
    d = Path(d or services_dir())
    s = load(d)
    if s is None:
        return False
    _stop(s)
    _state_file(d).unlink(missing_ok=True)
    return True


def describe(s: Optional[Services]) -> str:
    if s is None:
        return "embedded services: not running (dpsearch services up starts them)"
    h = healthy(s)
    return "\n".join([
        f"S3 (SeaweedFS):  {s.s3_endpoint}  pid {s.s3_pid}  {'up' if h['s3'] else 'DOWN'}  bucket {s.bucket}",
        f"MLflow:          {s.mlflow_uri}  pid {s.mlflow_pid}  {'up' if h['mlflow'] else 'DOWN'}",
        f"data:            {s.dir}",
        "clients:         export MLFLOW_TRACKING_URI=" + s.mlflow_uri + " AWS_ENDPOINT_URL=" + s.s3_endpoint
        + " (S3 keys in " + str(Path(s.dir) / "credentials.json") + ")"])
