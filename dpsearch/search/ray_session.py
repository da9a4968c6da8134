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
    saved = {k: os.environ.get(k) for k in _AUTH_VARS}
    if not address:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
        _reload_ray_auth()
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level=logging.WARNING, runtime_env=runtime_env)
        yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not address:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            _reload_ray_auth()
