"""Real hosts for the cluster tests, on loopback only: an OpenSSH server for Ray's local provider, and
process cleanup by path for the Ray processes a test starts (never a machine-wide `ray stop`)."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# sshd in a PID namespace of its own, with its own /proc: whatever runs over its SSH sessions (`ray up`'s `ray start`,
# `ray down`'s `ray stop`, `--address auto`) sees and stops only the Ray processes started there, never another
# test's or a user's; and when the namespace's first process (sshd) dies, the kernel ends everything in it.
_UNSHARE = [shutil.which("unshare") or "unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _pid_namespaces() -> bool:
    """Whether this machine lets us make a PID namespace (root, or a sandbox that allows it)."""
    try:
        return subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


PID_NAMESPACES = _pid_namespaces()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmpdir(prefix: str) -> Path:
    """Ray's Unix sockets live under its temp dir and must stay under 107 characters: /tmp, not pytest's."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class SSHHost:
    """127.0.0.1 as a remote machine: sshd on its own port, a key made for it, and a HOME of its own
    (sshd's SetEnv), so `ray up` writes ~/.bashrc, ~/.ray and ~/ray_bootstrap_* there, not in the real home."""

    root: Path
    port: int
    key: Path
    home: Path
    bin: Path  # first on the launcher's PATH: an `ssh` that adds -p PORT (Ray's runner has no port option)
    user: str
    proc: subprocess.Popen

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "ssh"), "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
                               f"{self.user}@127.0.0.1", command], capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        """sshd and, in a PID namespace, everything started in it (unshare ignores SIGTERM while its child runs; a
        SIGKILL makes it kill sshd, the namespace's first process, and the kernel the rest)."""
        self.proc.kill()
        self.proc.wait(10)


def start_sshd(root: Path) -> SSHHost:
    if not Path(SSHD).exists():
        raise RuntimeError("sshd not found: install Debian's openssh-server (scripts/test.sh does)")
    port, user, home = free_port(), getpass.getuser(), root / "home"
    home.mkdir()
    for name in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    shutil.copy(root / "id.pub", root / "authorized_keys")
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        f"SetEnv HOME={home}", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory, normally made by systemd
    log = open(root / "sshd.log", "w")
    cmd = [SSHD, "-D", "-e", "-f", str(root / "sshd_config")]
    proc = subprocess.Popen([*_UNSHARE, *cmd] if PID_NAMESPACES else cmd, stdout=log, stderr=subprocess.STDOUT)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -p {port} "$@"\n')
    wrapper.chmod(0o755)
    host = SSHHost(root, port, root / "id", home, bin_dir, user, proc)
    deadline = time.time() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}")
        r = host.ssh("echo $HOME")
        if r.returncode == 0 and r.stdout.strip() == str(home):
            return host
        if time.time() > deadline:
            raise RuntimeError(f"sshd on 127.0.0.1:{port} did not accept the key: {r.stderr}")
        time.sleep(0.5)


def processes_under(path: Path) -> list[psutil.Process]:
    """Processes whose command line names `path` (Ray's processes name their temp/session dir), and all
    their descendants (Ray's agents retitle themselves `ray::DashboardAgent` and name no path)."""
    found, needle = {}, str(path)
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and any(needle in a for a in (p.info["cmdline"] or [])):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def kill_under(path: Path) -> list[psutil.Process]:
    """Kills what a test left running under `path`, descendants included; returns what there was."""
    procs = processes_under(path)
    _sigkill(procs)
    return procs


def _sigkill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def kill_tree(proc) -> None:
    """Kills a subprocess started with start_new_session=True and every process under it (the local Ray
    it started included), and nothing else: never a machine-wide `ray stop`."""
    try:
        procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    _sigkill(procs)
