"""The Ray a sweep runs on: a cluster it joins (`--address`), or a local Ray of its own.

A local Ray holds the private set in its object store, and Ray 2.60 listens on the machine's address
(it turns a loopback node IP into the routable one). So a local Ray of ours runs with token auth and a
fresh random token for this sweep, kept in this process's environment only (no ~/.ray/auth_token is
written), with Ray's usage statistics off; the environment is restored when the sweep ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from typing import Iterator, Optional

_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")
# Ray Tune adds its CSV, JSON and TensorBoard loggers to every run unless this is "1"; with the TensorBoard one it
# prints "To visualize your results with TensorBoard, run: `tensorboard --logdir …`" at the start of every sweep
# (ray/tune/tune.py, experiment_started), a hint to a tool dpsearch neither uses nor installs. Ray has no switch
# for that logger alone, so tune_file_loggers() sets this and passes the other two itself.
_TUNE_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def tune_file_loggers() -> list:
    """Ray Tune's result.json and progress.csv loggers, for a new Tuner's RunConfig(callbacks=[..., *these]), and
    Ray's automatic loggers off for the rest of this ray_session(): the same files in the sweep's storage (Ray's
    ExperimentAnalysis reads them back) without the TensorBoard logger and its hint. Call inside ray_session(),
    which restores the variable when it ends."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ[_TUNE_AUTO_LOGGERS] = "1"
    return [CSVLoggerCallback(), JsonLoggerCallback()]


CPUS_ENV = "DPSEARCH_CPUS"


def local_cpus() -> Optional[int]:
    """The cores a sweep's own local Ray may use ($DPSEARCH_CPUS; unset: all of them, Ray's default). Trials,
    their torch threads and the final stage are sized from it (search/resources.py), so two sweeps side by side, or
    a sweep beside other work, can share a machine without running more threads than cores: on 2 cores, two smoke
    sweeps at 2 threads each took 68 s apiece, at 1 thread each 45 s (one alone: 39 s)."""
    from dpsearch.config import ConfigError

    raw = os.environ.get(CPUS_ENV)
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{CPUS_ENV}={raw!r}: give a whole number of cores ≥ 1, or unset it to use all of them")
    return n


def _reload_ray_auth() -> None:
    """Ray reads RAY_AUTH_MODE and the token once per process and caches both; make it read them again
    (what Ray's own authentication tests do)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def ray_session(address: Optional[str], runtime_env: Optional[dict] = None) -> Iterator[None]:
    """Connected to Ray inside the block. With an address, Ray's own rule applies: a cluster started with
    token auth is joined with the token in ~/.ray/auth_token or RAY_AUTH_TOKEN. A Ray this process is
    already connected to is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    cpus = None if address else local_cpus()  # a cluster's nodes declare their own
    saved = {k: os.environ.get(k) for k in _AUTH_VARS}
    saved_loggers = os.environ.get(_TUNE_AUTO_LOGGERS)
    if not address:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
        _reload_ray_auth()
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level=logging.WARNING, runtime_env=runtime_env, num_cpus=cpus)
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.environ.pop(_TUNE_AUTO_LOGGERS, None) if saved_loggers is None else os.environ.__setitem__(
            _TUNE_AUTO_LOGGERS, saved_loggers)
        if not address:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            _reload_ray_auth()
