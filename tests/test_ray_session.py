"""The local Ray a sweep starts holds the private set: it refuses clients without the sweep's token."""

import os
import subprocess
import sys
from pathlib import Path

from dpsearch.search.ray_session import ray_session

CONNECT = "import ray; ray.init(address={addr!r}); print('CONNECTED', ray.cluster_resources().get('CPU'))"


def _clients(addr: str, *envs: dict) -> list[str]:
    """One client process per environment, all started at once (each spends most of its time importing Ray);
    their stdout, in order."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    procs = [subprocess.Popen([sys.executable, "-c", CONNECT.format(addr=addr)], env={**base, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in envs]
    return [p.communicate(timeout=120)[0] for p in procs]


def test_a_local_ray_needs_the_sweeps_fresh_token_and_leaves_no_token_behind(monkeypatch, tmp_path):
    import ray

    monkeypatch.setenv("HOME", str(tmp_path))  # where Ray would write ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("DPSEARCH_CPUS", "1")  # the cores the sweep's own Ray may use
    with ray_session(None):
        assert ray.cluster_resources()["CPU"] == 1
        addr = ray.get_runtime_context().gcs_address
        token = os.environ["RAY_AUTH_TOKEN"]
        assert os.environ["RAY_AUTH_MODE"] == "token" and len(token) == 64
        none, wrong, right = _clients(addr, {"RAY_AUTH_MODE": "disabled"},
                                      {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                                      {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        assert "CONNECTED" not in none and "CONNECTED" not in wrong
        assert "CONNECTED" in right
    assert not ray.is_initialized() and "RAY_AUTH_TOKEN" not in os.environ
    assert not (Path(tmp_path) / ".ray" / "auth_token").exists()


def test_tune_file_loggers_keep_result_files_and_drop_the_tensorboard_hint(monkeypatch):
    """Ray prints its TensorBoard hint iff a TBXLoggerCallback is among the callbacks (ray/tune/tune.py); with
    tune_file_loggers() there is none, and the CSV and JSON loggers are there, once each."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from dpsearch.search.ray_session import tune_file_loggers

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # restored (removed) after the test
    assert any(isinstance(c, TBXLoggerCallback) for c in _create_default_callbacks([]))  # Ray's default: the hint
    callbacks = _create_default_callbacks(tune_file_loggers())
    assert not any(isinstance(c, TBXLoggerCallback) for c in callbacks)
    assert [type(c) for c in callbacks if isinstance(c, (CSVLoggerCallback, JsonLoggerCallback))] == [
        CSVLoggerCallback, JsonLoggerCallback]


def test_the_cores_a_local_ray_may_use_are_a_whole_number_or_a_clear_error(monkeypatch):
    import pytest

    from dpsearch.config import ConfigError
    from dpsearch.search.ray_session import local_cpus

    monkeypatch.delenv("DPSEARCH_CPUS", raising=False)
    assert local_cpus() is None  # all of them: Ray's default
    monkeypatch.setenv("DPSEARCH_CPUS", "3")
    assert local_cpus() == 3
    for bad in ("0", "-1", "1.5", "two"):
        monkeypatch.setenv("DPSEARCH_CPUS", bad)
        with pytest.raises(ConfigError, match="whole number of cores"):
            local_cpus()
