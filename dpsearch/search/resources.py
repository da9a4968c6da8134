"""Where trials run: GPUs the cluster has or can autoscale to, trials at once, per-trial CPUs and GPUs,
and the client settings a trial on another node needs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from dpsearch.search.options import SweepOptions

log = logging.getLogger(__name__)


def _cluster_gpus() -> float:
    """GPUs the cluster has now or can add: GPU workers that autoscale from zero count too, or a sweep
    started on a CPU head would never ask for them and never make the autoscaler add one."""
    import ray

    now = ray.cluster_resources().get("GPU", 0)
    most = 0.0
    try:  # autoscaler v2 / KubeRay report their node types to the GCS (Ray Train reads them the same way)
        from ray._private.state import state

        most = float((state.get_max_resources_from_cluster_config() or {}).get("GPU", 0))
    except Exception as e:  # noqa: BLE001 - a private API: fall back to the next source
        log.debug("could not read the autoscaler's node types from the GCS: %s", e)
    if not most:  # the classic autoscaler does not: on a `ray up` head its config is this file
        boot = Path.home() / "ray_bootstrap_config.yaml"
        if boot.exists():
            import yaml

            try:
                most = autoscalable_gpus(yaml.safe_load(boot.read_text()))
            except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
                log.warning("could not read the autoscaler config %s: %s", boot, e)
    return max(now, min(most, 1e6))


def autoscalable_gpus(cluster_config: dict) -> float:
    """The most GPUs the autoscaler of a cluster launcher config can bring up."""
    types = cluster_config.get("available_node_types") or {}
    head = cluster_config.get("head_node_type")
    total = 0.0
    for name, t in types.items():
        gpus = float((t.get("resources") or {}).get("GPU", 0))
        count = 1 if name == head else int(t.get("max_workers", cluster_config.get("max_workers", 0)))
        total += gpus * count
    return total


TRIAL_MEMORY = 3 * 2**30  # bytes per default trial: a Ray trial process peaked at 2.15 GB RSS (sweep, 2026-11-26)


def _largest_node_cpus() -> int:
    import ray

    return max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1]) or 1


def auto_concurrency(trials: int | None) -> int:
    """Trials at once when --concurrency is not given: one per GPU, else one per CPU core, at most
    `trials` and, on CPUs, no more than Ray's memory holds at TRIAL_MEMORY each. One core per trial,
    because bench/concurrency.py measured on 2 cores that 2 trials × 1 thread do 29% more work than
    1 trial × 2 threads (small matmuls scale badly across threads)."""
    import ray

    total = ray.cluster_resources()
    gpus = _cluster_gpus()
    c = int(gpus) if gpus >= 1 else int(total.get("CPU", 1))
    if gpus < 1 and total.get("memory"):  # GPU nodes may not exist yet (autoscaling): their memory is unknown
        c = min(c, int(total["memory"] // TRIAL_MEMORY))
    return max(1, c if trials is None else min(c, trials))  # None: K is secret (private selection)


def trial_resources(opts: SweepOptions) -> dict:
    """Per trial: CPUs (= torch threads: never more threads than cores, see bench/concurrency.py) and GPUs."""
    import ray

    total = ray.cluster_resources()
    cpus = int(total.get("CPU", 1))
    gpus = _cluster_gpus()
    per_cpu = max(1, cpus // opts.concurrency) if not gpus else 1
    per_gpu = opts.gpus_per_trial if opts.gpus_per_trial is not None else (min(1.0, gpus / opts.concurrency) if gpus else 0)
    return {"cpu": per_cpu, "gpu": per_gpu, "threads": per_cpu, "val_cpu": per_cpu if gpus else _largest_node_cpus()}


# Client settings a trial on another node needs to reach the sweep's storage. Credentials are not among
# them: a runtime_env is visible to anyone who can read the cluster's state; nodes use their own
# instance profile or AWS config.
NODE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_S3_ENDPOINT_URL",
            "DPSEARCH_SIGMA_MEMO")  # privacy/sigma_memo.py: whether N is public in this sweep


def node_env(address: Optional[str]) -> Optional[dict]:
    """On a cluster (an address given), the storage endpoint reaches every node's trials; locally the
    workers inherit the driver's environment anyway."""
    if not address:
        return None
    env = {k: os.environ[k] for k in NODE_ENV if os.environ.get(k)}
    return {"env_vars": env} if env else None
