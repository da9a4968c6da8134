"""The services a sweep connects to: the storage for its record, checkpoints and release, and MLflow."""

from __future__ import annotations

import logging
import os
from typing import Optional

from dpsearch.paths import home
from dpsearch.search.options import SweepOptions
from dpsearch.storage import check_storage

log = logging.getLogger(__name__)


def connect_services(opts: SweepOptions) -> tuple[str, Optional[str]]:
    """(storage root, MLflow URI or None). Configured services are used as they are; with nothing
    configured, the embedded ones are started (and left running for the UI)."""
    from dpsearch import services

    uri = None if opts.tracking == "none" else (
        opts.tracking if opts.tracking not in (None, "auto") else os.environ.get("MLFLOW_TRACKING_URI"))
    storage = opts.storage
    running = services.load()
    if uri and running is not None and uri == running.mlflow_uri:
        uri = None  # MLflow itself exports the embedded server's URI to the environment: that is not a user setting
    if opts.tracking in (None, "auto") and not uri:
        s, started = services.up()
        log.info("%s the embedded services: MLflow %s, S3 %s", "started" if started else "using", s.mlflow_uri,
                 s.s3_endpoint)
        uri = s.mlflow_uri
        if storage is None:  # the embedded S3 too: this process and the local Ray workers it starts reach it
            os.environ.update({k: v for k, v in s.client_env().items() if k.startswith("AWS_")})
            storage = s.storage
    storage = storage or str(home() / "sweeps")
    check_storage(storage)
    if uri:
        from dpsearch.tracking import check_tracking

        check_tracking(uri)
    return storage, uri
