"""Shared fixtures. Real components only; sizes are small so the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch

# pytest-xdist runs the suite in parallel workers (scripts/test.sh); each worker gets its share of the cores so two
# CPU-bound tests never oversubscribe them, and its own service ports.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", … under xdist, "" in a plain run
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))
_OFFSET = int(WORKER[2:] or 0) if WORKER.startswith("gw") else 0
# ... and each worker's sweeps their share of the cores (their own Ray's CPUs, hence their trials' and final stage's
# threads; CLI sweeps in subprocesses inherit it): two sweeps at 2 threads each on 2 cores ran 1.5x as long as at 1.
os.environ.setdefault("DPSEARCH_CPUS", str(max(1, (os.cpu_count() or 1) // WORKERS)))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """The tests that read the one tracked sweep stay on one xdist worker (--dist loadgroup), so it runs once. The
    tests that train on the tiny pretrained model (sweeps, end-to-end runs: the long ones) are handed out first, so
    the workers' last minutes are short tests, not one long sweep beside an idle worker."""
    for item in items:
        if "tracked" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tracked"))
    items.sort(key=lambda i: not {"tracked", "tiny_model_dir"} & set(getattr(i, "fixturenames", ())))


def pytest_deselected(items):
    """scripts/test.sh runs its serial pass only when the parallel pass set serial tests aside: it says so here."""
    left = os.environ.get("DPSEARCH_SERIAL_LEFT")
    if left and any(i.get_closest_marker("serial") for i in items):
        open(left, "a").close()


@pytest.fixture(scope="session")
def mnist():
    from dpsearch.data import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def tiny_pretrain_config():
    from dpsearch.config import ModelConfig, PretrainConfig

    return PretrainConfig(n_public=300, ae_epochs=1, ae_batch=64, ldm_epochs=1, ldm_batch=64,
                          model=ModelConfig(ae_channels=(8, 16, 16), unet_channels=(16, 32), cross_attention_dim=32))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pretrain_config):
    """A real (tiny) pretrained model on public data, shared by the tests that need one."""
    from dpsearch.pretrain import pretrain

    return pretrain(tiny_pretrain_config, out=tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session", autouse=True)
def embedded_services_dir(tmp_path_factory):
    """Sweeps with nothing configured start the embedded S3 + MLflow: here, in a test directory,
    on ports no user service is likely to hold, stopped at the end of the session."""
    from dpsearch import services

    d = tmp_path_factory.mktemp("services")
    saved = {k: os.environ.get(k) for k in ("DPSEARCH_SERVICES_DIR", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL",
                                            "DPSEARCH_S3_PORT", "DPSEARCH_MLFLOW_PORT")}
    os.environ.update(DPSEARCH_SERVICES_DIR=str(d), DPSEARCH_S3_PORT=str(18391 + _OFFSET),
                      DPSEARCH_MLFLOW_PORT=str(15391 + _OFFSET))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    yield d
    services.down(d)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tracked(tiny_model_dir, embedded_services_dir):
    """One real smoke sweep, tracked on the embedded MLflow and stored on the embedded S3 (several tests
    read it: MLflow fields, the UI, the HTML report)."""
    from dpsearch.search import SweepOptions, run_sweep

    return run_sweep(SweepOptions(eps=5.0, space="smoke", trials=3, concurrency=1, sampler="random", seed=1,
                                  model=str(tiny_model_dir), name="tracked", progress=False))
