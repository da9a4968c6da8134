"""A sweep: Ray Tune + Optuna over the layer range, C, B, lr and epochs, every trial under one fixed ε.

The sweep orchestrates the pipeline functions (finetune, sample, evaluate); it owns only what is
about many trials: the validation generator, the search, checkpoint/resume and the summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from dpsearch.config import ConfigError, check_eps_range, parse_layers
from dpsearch.data import ImageSet
from dpsearch.paths import home
from dpsearch.privacy.search_cost import SELECTIONS
from dpsearch.storage import Store, check_reachable, load_npz, npz_bytes
from dpsearch.space import SearchSpace, define_by_run, load_space

log = logging.getLogger(__name__)
METRIC, MODE = "objective", "max"  # accuracy on the DP synthetic validation set


@dataclass
class SweepOptions:
    eps: Optional[float] = None  # default: the space's ε
    space: str = "mnist"
    trials: int = 8
    concurrency: Optional[int] = None  # trials at once; None: auto_concurrency() once Ray is up
    sampler: str = "tpe"
    scheduler: str = "none"
    address: Optional[str] = None
    name: Optional[str] = None
    seed: int = 0
    val_eps: Optional[float] = None  # default: the sweep's ε
    storage: Optional[str] = None  # local dir or s3://bucket/prefix; default: the embedded S3, else DPSEARCH_HOME/sweeps
    tracking: Optional[str] = None  # MLflow URI; None/"auto": MLFLOW_TRACKING_URI, else the embedded server; "none": off
    model: Optional[str] = None  # overrides the space's pretrained model
    gpus_per_trial: Optional[float] = None  # default: 1/concurrency of a GPU when the cluster has GPUs
    private_selection: Optional[str] = None  # geometric | logarithmic | poisson: K is random, only the best released
    mean_trials: Optional[float] = None  # μ, the mean of K under private selection
    eps_total: Optional[float] = None  # the released model's ε: per-trial (and validation) ε solved from it
    progress: bool = True

    def check(self) -> None:
        for flag, value in (("--eps", self.eps), ("--val-eps", self.val_eps), ("--eps-total", self.eps_total)):
            if value is not None:
                try:
                    check_eps_range(value)
                except ConfigError as e:
                    raise ConfigError(f"{flag}: {e}") from None
        if self.eps_total is not None:
            if self.eps is not None or self.val_eps is not None:
                raise ConfigError("give either --eps (per trial) or --eps-total (the released model), not both")
        if self.trials < 1:
            raise ConfigError(f"--trials must be ≥ 1, got {self.trials}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be ≥ 1, got {self.concurrency}")
        if self.sampler not in ("tpe", "random"):
            raise ConfigError(f"--sampler must be tpe or random, got {self.sampler}")
        if self.scheduler not in ("none", "asha"):
            raise ConfigError(f"--scheduler must be none or asha, got {self.scheduler}")
        if self.private_selection is not None:
            if self.private_selection not in SELECTIONS:
                raise ConfigError(f"--private-selection must be one of {', '.join(SELECTIONS)}, got {self.private_selection}")
            if self.sampler != "random":
                raise ConfigError("--private-selection needs --sampler random: TPE picks each trial from earlier trials' "
                                  "scores, so the trials are not independent runs and the repeat-and-select bound "
                                  "(Papernot & Steinke) does not apply")
            if self.scheduler != "none":
                raise ConfigError("--private-selection needs --scheduler none: ASHA stops trials by comparing them with "
                                  "each other, which makes the runs depend on one another")
            if self.mean_trials is None or not (math.isfinite(self.mean_trials) and self.mean_trials >= 1):
                raise ConfigError(f"--private-selection needs --mean-trials μ ≥ 1, got {self.mean_trials}")
        elif self.mean_trials is not None:
            raise ConfigError("--mean-trials only applies with --private-selection")
        if self.name is not None and (not self.name or "/" in self.name):
            raise ConfigError(f"--name must be a plain name without '/', got {self.name!r}")


@dataclass
class SweepResult:
    name: str
    path: Path
    rows: list[dict]  # one per trial, sorted by objective
    validation_privacy: dict
    spearman: Optional[float]
    best: Optional[dict]
    best_oracle: Optional[dict]
    seconds: float
    extra: dict = field(default_factory=dict)


# --- the data every trial shares, shipped through the Ray object store --------------------------

def pack_model(model_dir: Path) -> dict[str, bytes]:
    """The pretrained model's files as bytes, so trials on any node get it from the object store."""
    model_dir = Path(model_dir)
    return {str(p.relative_to(model_dir)): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}


def unpack_model(files: dict[str, bytes]) -> Path:
    """Materializes a packed model once per node (content-addressed) and returns its directory."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode())
        h.update(files[k])
    out = Path(tempfile.gettempdir()) / "dpsearch-models" / h.hexdigest()[:16]
    if not (out / "dpsearch_model.json").exists():
        tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None))
        for k, data in files.items():
            (tmp / k).parent.mkdir(parents=True, exist_ok=True)
            (tmp / k).write_bytes(data)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(out)
        except OSError:  # another trial on this node got there first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- the validation generator ------------------------------------------------------------------

def make_validation_set(model_files: dict[str, bytes], private: ImageSet, space_json: str, eps: float, seed: int,
                        threads: int) -> tuple[ImageSet, dict]:
    """One DP fine-tune with the space's reference config under its own ε, then a labelled sample V.

    Not a candidate: trials with the same configuration are separate DP runs with their own noise.
    """
    import torch

    from dpsearch.device import pick_device
    from dpsearch.finetune import dp_finetune
    from dpsearch.models import load_ldm
    from dpsearch.sample import sample

    torch.set_num_threads(threads)
    space = SearchSpace.model_validate_json(space_json)
    cfg = space.reference_config(eps, seed)
    model = load_ldm(unpack_model(model_files), pick_device("auto"))
    res = dp_finetune(model, private, cfg, progress=False)
    smp = space.sample.model_copy(update={"per_class": space.validation.per_class, "seed": seed + 104729})
    v = sample(res.model, smp, progress=False)
    return ImageSet(v.images, v.labels, v.num_classes, "dp-synthetic-validation"), res.privacy.to_dict()


# --- one trial, as a Ray Tune function trainable -----------------------------------------------

def _flat_privacy(p: dict) -> dict:
    keys = ("eps", "delta", "sigma", "q", "steps", "accountant", "trainable_params", "trainable_fraction", "eps_pld_check")
    return {f"privacy/{k}": p[k] for k in keys}


def dp_trial(config: dict, *, model_files: dict, private: ImageSet, validation: ImageSet, oracle: ImageSet | None,
             space_json: str, eps: float, seed: int, threads: int) -> None:
    """config (from Optuna) → FinetuneConfig → DP fine-tune → sample → score on V; reports every epoch."""
    import torch
    from ray import tune

    from dpsearch.checkpoints import report_verified, verify_local
    from dpsearch.device import pick_device
    from dpsearch.evaluate import evaluate, validation_loss
    from dpsearch.finetune import FinetuneState, dp_finetune
    from dpsearch.models import load_ldm, save_ldm
    from dpsearch.outputs import write_json
    from dpsearch.privacy.release import release
    from dpsearch.sample import sample, save_grid

    torch.set_num_threads(threads)
    space = SearchSpace.model_validate_json(space_json)
    ft = space.finetune_config(config, eps, seed)
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            d = Path(d)
            verify_local(d)  # a corrupt checkpoint is an error, never a silent restart from garbage
            if (d / "result.json").exists():  # finished before the sweep stopped: report it again
                tune.report(json.loads((d / "result.json").read_text()), checkpoint=ckpt)
                return
            resume = FinetuneState.load(d / "state.pt")
    import ray

    device = pick_device("auto")
    model = load_ldm(unpack_model(model_files), device)
    where = {"node": ray.get_runtime_context().get_node_id(), "device": str(device)}  # which machine ran it

    def on_epoch(rec: dict, state: FinetuneState) -> None:
        metrics = release({"epoch": rec["epoch"], "val_loss": validation_loss(model, validation),
                           "eps_spent": rec["eps_spent"], "delta": rec["delta"], METRIC: float("nan"), "done": False})
        with tempfile.TemporaryDirectory() as d:
            state.save(Path(d) / "state.pt")
            report_verified(metrics, Path(d))

    t = time.time()
    res = dp_finetune(model, private, ft, progress=False, on_epoch=on_epoch, resume=resume)
    t_ft = time.time() - t
    t = time.time()
    synthetic = sample(res.model, space.sample, progress=False)
    t_sample = time.time() - t
    t = time.time()
    scores = evaluate(synthetic, oracle, space.evaluate, progress=False, validation=validation)
    t_eval = time.time() - t
    final = release({"epoch": ft.epochs, "val_loss": validation_loss(res.model, validation), "done": True,
                     **{k: v for k, v in scores.items() if isinstance(v, (int, float))},
                     **_flat_privacy(res.privacy.to_dict()), "layers": res.privacy.layers,
                     "time/finetune_s": t_ft, "time/sample_s": t_sample, "time/evaluate_s": t_eval, **where})
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_ldm(res.model.to("cpu"), d / "model", extra={"privacy": res.privacy.to_dict()})
        write_json(d / "privacy.json", res.privacy.to_dict())
        write_json(d / "history.json", {"epochs": res.history})
        save_grid(synthetic, d / "samples.png")
        write_json(d / "result.json", final)
        report_verified(final, d)


# --- the sweep ---------------------------------------------------------------------------------

def _load_or_make_validation(meta: Store, model_files, private, space: SearchSpace, val_eps: float, seed: int,
                             resources: dict) -> tuple[ImageSet, dict]:
    """V is made once per sweep and stored with it, so a resumed sweep scores against the same V."""
    import ray

    if meta.exists("validation.npz") and meta.exists("validation_privacy.json"):
        return load_npz(meta.read_bytes("validation.npz"), ImageSet.load), json.loads(meta.read_text("validation_privacy.json"))
    log.info("making the DP synthetic validation set (reference config %s, ε = %g)", space.reference.model_dump(), val_eps)
    # It runs alone, before any trial: on CPUs it gets a whole node, not one trial's share.
    task = ray.remote(make_validation_set).options(num_cpus=resources["val_cpu"], num_gpus=resources["gpu"])
    v, priv = ray.get(task.remote(model_files, private, space.model_dump_json(), val_eps, seed, resources["val_cpu"]))
    meta.write_bytes("validation.npz", npz_bytes(v.save))
    meta.write_text("validation_privacy.json", json.dumps(priv, indent=2))
    return v, priv


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


def auto_concurrency(trials: int) -> int:
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
    return max(1, min(c, trials))


def _resources(opts: SweepOptions) -> dict:
    """Per trial: CPUs (= torch threads: never more threads than cores, see bench/concurrency.py) and GPUs."""
    import ray

    total = ray.cluster_resources()
    cpus = int(total.get("CPU", 1))
    gpus = _cluster_gpus()
    per_cpu = max(1, cpus // opts.concurrency) if not gpus else 1
    per_gpu = opts.gpus_per_trial if opts.gpus_per_trial is not None else (min(1.0, gpus / opts.concurrency) if gpus else 0)
    return {"cpu": per_cpu, "gpu": per_gpu, "threads": per_cpu, "val_cpu": per_cpu if gpus else _largest_node_cpus()}


def _connect(opts: SweepOptions) -> tuple[str, Optional[str]]:
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
    check_reachable(storage)
    if uri:
        from dpsearch.tracking import check_reachable as check_mlflow

        check_mlflow(uri)
    return storage, uri


def run_sweep(opts: SweepOptions, resume: Optional[str] = None, retry_errored: bool = False) -> SweepResult:
    from ray import tune

    from dpsearch.config import PretrainConfig
    from dpsearch.data import load_dataset
    from dpsearch.models import attention_modules, load_ldm
    from dpsearch.pretrain import pretrain
    from dpsearch.fingerprints import check_resume, files_fingerprint, private_fingerprint, text_fingerprint
    from dpsearch.ray_session import ray_session
    from dpsearch.started_trials import TrialCounter

    opts.check()
    if resume:
        storage, uri = _connect(opts)
        meta = Store(storage).child(resume, "dpsearch")
        if not meta.exists("sweep.json"):
            raise ConfigError(f"no sweep named {resume!r} under {storage} (looked for {meta.uri('sweep.json')})")
        saved = json.loads(meta.read_text("sweep.json"))
        opts = SweepOptions(**{**saved["options"], "progress": opts.progress, "address": opts.address,
                               "storage": storage, "tracking": opts.tracking})
        space = SearchSpace(**saved["space"])
    else:
        space = load_space(opts.space)
    if opts.eps_total is not None and not resume:
        from dpsearch.privacy.report import solve_per_trial_eps

        if space.validation.eps is not None:
            raise ConfigError(f"the space sets validation.eps = {space.validation.eps:g}, but --eps-total solves the "
                              f"validation generator's ε together with the trials'; remove one of them")

        n = space.n_private or len(load_dataset(space.private)[0])
        log.info("solving the per-trial ε for a released-model total of ε = %g ...", opts.eps_total)
        per, g = solve_per_trial_eps(space, n, opts.eps_total, trials=None if opts.private_selection else opts.trials,
                                     selection=opts.private_selection, mean_trials=opts.mean_trials)
        log.info("--eps-total %g: every trial and the validation generator get ε = %.4f (δ = %g); released model: "
                 "ε = %.3f by %s", opts.eps_total, per, g.delta, g.eps, g.accountant)
        opts.eps = opts.val_eps = per
    eps = opts.eps if opts.eps is not None else space.eps
    val_eps = validation_eps(opts, space, eps)
    budget = f"epstotal{opts.eps_total:g}" if opts.eps_total else f"eps{eps:g}"  # what the user asked for
    name = resume or opts.name or f"{space.name}-{budget}-{time.strftime('%Y%m%d-%H%M%S')}"

    # Everything that can be wrong with the input fails here, before any training.
    private, oracle = load_dataset(space.private)
    if space.n_private:
        private = private.subset(space.n_private, seed=opts.seed)
    for cfg_probe in _probe_configs(space, eps):
        cfg_probe.check_against_data(len(private))
    model_dir = opts.model or space.model or pretrain(PretrainConfig())
    probe = load_ldm(model_dir)
    space.params.layers.check_model(len(attention_modules(probe.unet)))
    parse_layers(space.reference.layers, len(attention_modules(probe.unet)))
    del probe
    if not resume:
        storage, uri = _connect(opts)
        meta = Store(storage).child(name, "dpsearch")
        if meta.exists("sweep.json"):
            raise ConfigError(f"a sweep named {name!r} already exists under {storage}: use --resume {name} or another --name")

    if opts.private_selection and not resume:
        opts.trials = draw_trials(opts.private_selection, opts.mean_trials)
        log.info("private selection (%s, mean %g): K = %d trials drawn", opts.private_selection, opts.mean_trials,
                 opts.trials)
        if opts.trials == 0:
            raise ConfigError("the Poisson draw gave K = 0 trials: by design nothing is trained or released; run again")
    model_files = pack_model(Path(model_dir))
    fingerprints = {"private": private_fingerprint(private.images, private.labels, create_key=not resume),
                    "model": files_fingerprint(model_files), "space": text_fingerprint(space.model_dump_json())}
    if resume:
        saved = json.loads(meta.read_text("sweep.json"))
        check_resume(saved.get("fingerprints", {}), fingerprints, name)
    else:
        saved = {"options": {**asdict(opts), "eps": eps, "val_eps": val_eps, "name": name, "model": str(model_dir),
                             "storage": storage, "tracking": None},
                 "n_private": len(private), "space": json.loads(space.model_dump_json()), "fingerprints": fingerprints}
    parent = None
    if uri:
        from dpsearch.tracking import start_parent

        parent = start_parent(uri, name, saved.get("mlflow_parent_run"), _parent_params(saved, eps, val_eps),
                              space.model_dump_json(indent=2))
        saved["mlflow_parent_run"] = parent
    meta.write_text("sweep.json", json.dumps(saved, indent=2))

    t0 = time.time()
    status = "FAILED"
    try:
        with ray_session(opts.address, runtime_env=_node_env(opts.address)):
            if opts.concurrency is None:  # saved options keep "auto": a resumed sweep decides again where it runs
                opts.concurrency = saved["concurrency_used"] = auto_concurrency(opts.trials)
                log.info("running %d trials at once (auto; --concurrency sets it)", opts.concurrency)
                if uri:
                    from mlflow import MlflowClient

                    MlflowClient(uri).set_tag(parent, "concurrency_used", opts.concurrency)
            res = _resources(opts)
            validation, val_privacy = _load_or_make_validation(meta, model_files, private, space, val_eps, opts.seed, res)
            trainable = tune.with_resources(
                tune.with_parameters(dp_trial, model_files=model_files, private=private, validation=validation, oracle=oracle,
                                     space_json=space.model_dump_json(), eps=eps, seed=opts.seed, threads=res["threads"]),
                {"cpu": res["cpu"], "gpu": res["gpu"]})
            callbacks = [TrialCounter(Store(storage).uri(name, "dpsearch"))]
            if uri:
                from dpsearch.tracking import TrialTracker

                callbacks.append(TrialTracker(uri, name, parent))
            path = Store(storage).uri(name)
            if resume and tune.Tuner.can_restore(path):
                tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                             resume_errored=retry_errored)
            else:
                started = TrialCounter(meta.uri()).started()
                if resume and started:
                    if opts.private_selection:
                        raise ConfigError(f"sweep {name}: Ray's experiment state cannot be restored, and private selection "
                                          f"cannot start its K = {opts.trials} trials again (repeat-and-select would no "
                                          f"longer hold). Start a new sweep.")
                    log.warning("sweep %s: Ray's experiment state cannot be restored; starting %d new trials. The %d trials "
                                "already started stay counted in the released ε.", name, opts.trials, len(started))
                tuner = tune.Tuner(trainable, tune_config=_tune_config(opts, space),
                                   run_config=tune.RunConfig(
                                       name=name, storage_path=storage, verbose=1 if opts.progress else 0,
                                       failure_config=tune.FailureConfig(max_failures=0), callbacks=callbacks,
                                       checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
            grid = tuner.fit()
            rows = _rows(grid)
            status = "FINISHED"
    finally:
        # Time across every run of this sweep, interrupted ones included (summary.seconds is this run's).
        saved["elapsed_s"] = saved.get("elapsed_s", 0.0) + (time.time() - t0)
        try:
            meta.write_text("sweep.json", json.dumps(saved, indent=2))
        except Exception as e:  # noqa: BLE001 - bookkeeping only: never hide the error that got us here
            log.warning("could not record the sweep's elapsed time: %s", e)
        if uri and status != "FINISHED":
            from mlflow import MlflowClient

            MlflowClient(uri).set_terminated(parent, "KILLED")
    from dpsearch.privacy.report import format_report, sweep_report

    result = summarize(name, Store(storage).uri(name), rows, val_privacy, time.time() - t0)
    result.extra["elapsed_s"] = saved["elapsed_s"]
    meta.write_text("summary.json", json.dumps(asdict(result), indent=2, default=str))
    result.extra["privacy"] = sweep_report(Store(storage).uri(name))
    meta.write_text("privacy_report.json", json.dumps(result.extra["privacy"], indent=2))
    if uri:
        from dpsearch.tracking import finish_parent

        finish_parent(uri, parent, json.loads(json.dumps(asdict(result), default=str)), result.extra["privacy"],
                      format_report(result.extra["privacy"]))
        result.extra["mlflow"] = {"uri": uri, "experiment": name, "parent_run": parent}
    return result


# Client settings a trial on another node needs to reach the sweep's storage. Credentials are not among
# them: a runtime_env is visible to anyone who can read the cluster's state; nodes use their own
# instance profile or AWS config.
_NODE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "MLFLOW_S3_ENDPOINT_URL")


def _node_env(address: Optional[str]) -> Optional[dict]:
    """On a cluster (an address given), the storage endpoint reaches every node's trials; locally the
    workers inherit the driver's environment anyway."""
    if not address:
        return None
    env = {k: os.environ[k] for k in _NODE_ENV if os.environ.get(k)}
    return {"env_vars": env} if env else None


def _parent_params(saved: dict, eps: float, val_eps: float) -> dict:
    o = saved["options"]
    return {"eps": eps, "val_eps": val_eps, "space": saved["space"]["name"], "trials": o["trials"],
            "sampler": o["sampler"], "scheduler": o["scheduler"], "concurrency": o["concurrency"] or "auto", "seed": o["seed"],
            "private_selection": o.get("private_selection"), "mean_trials": o.get("mean_trials"),
            "n_private": saved.get("n_private"), "storage": o["storage"], "model": o["model"]}


def validation_eps(opts: SweepOptions, space: SearchSpace, eps: float) -> float:
    """The validation generator's ε: --val-eps, else the space's validation.eps, else the trials' ε."""
    return next(e for e in (opts.val_eps, space.validation.eps, eps) if e is not None)


def draw_trials(selection: str, mean: float) -> int:
    """K for private selection, from OS entropy (never from --seed: a K anyone can recompute is a fixed K,
    and the repeat-and-select bound assumes a random one). γ is the one dp-accounting's bound uses."""

    import numpy as np
    from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

    rng = np.random.default_rng(secrets.randbits(128))
    if selection == "poisson":
        return int(rng.poisson(mean))
    gamma = rdp_lib._gamma_truncated_negative_binomial(SELECTIONS[selection], mean)
    if selection == "geometric":
        return int(rng.geometric(gamma))
    return int(rng.logseries(1 - gamma))  # logarithmic: P(K = k) ∝ (1 - γ)^k / k


def _probe_configs(space: SearchSpace, eps: float):
    """The extreme configurations of the space, to catch batch > N or δ ≥ 1/N before training."""
    for b in [*space.params.batch.values(), space.reference.batch]:
        yield space.finetune_config({"layers": "1-1", "clip": 1.0, "batch": b, "epochs": 1, "lr": 1e-3}, eps)


def tpe_startup_trials(trials: int) -> int:
    """Random trials before TPE models the scores: half the budget, 2 to 10. Optuna's default of 10
    would make a default 8-trial sweep pure random search while calling itself TPE."""
    return max(2, min(10, trials // 2))


def _tune_config(opts: SweepOptions, space: SearchSpace):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    sampler = (optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=tpe_startup_trials(opts.trials))
               if opts.sampler == "tpe" else optuna.samplers.RandomSampler(seed=opts.seed))
    searcher = OptunaSearch(space=define_by_run(space), metric=METRIC, mode=MODE, sampler=sampler)
    scheduler = None
    if opts.scheduler == "asha":
        # Stops trials on the diffusion loss measured on the DP synthetic validation set (post-processing),
        # never on the private training loss.
        max_epochs = max(space.params.epochs.values())
        scheduler = ASHAScheduler(metric="val_loss", mode="min", time_attr="training_iteration",
                                  grace_period=1, max_t=int(max_epochs) + 1, reduction_factor=2)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=opts.trials,
                           max_concurrent_trials=opts.concurrency)


def _rows(grid) -> list[dict]:
    rows = []
    for r in grid:
        m = r.metrics or {}
        cfg = r.config or {}
        rows.append({
            "trial": m.get("trial_id") or (os.path.basename(r.path) if r.path else "?"), "status": "ERROR" if r.error else (
                "DONE" if m.get("done") else "STOPPED"),
            "layers": cfg.get("layers"), "clip": cfg.get("clip"), "batch": cfg.get("batch"), "lr": cfg.get("lr"),
            "epochs": cfg.get("epochs"), "sigma": m.get("privacy/sigma"), "eps": m.get("privacy/eps"),
            "delta": m.get("privacy/delta"), "q": m.get("privacy/q"), "steps": m.get("privacy/steps"),
            "accountant": m.get("privacy/accountant"), "objective": m.get(METRIC), "oracle_accuracy": m.get("oracle/accuracy"),
            "synthetic_fid": m.get("synthetic/fid_to_validation"), "oracle_fid": m.get("oracle/fid"),
            "trainable_fraction": m.get("privacy/trainable_fraction"), "node": m.get("node"), "device": m.get("device"),
            "checkpoint": _checkpoint_uri(r.checkpoint) if r.checkpoint else None,
            "error": _error_line(r.error) if r.error else None})
    return rows


def _checkpoint_uri(ckpt) -> str:
    return f"s3://{ckpt.path}" if type(ckpt.filesystem).__name__ == "S3FileSystem" else ckpt.path


def _error_line(err: BaseException) -> str:
    """The exception's own message ("FloatingPointError: ..."), not Ray's traceback header."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)]
    return (named[-1] if named else lines[-1] if lines else type(err).__name__)[:300]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def summarize(name: str, path: str, rows: list[dict], val_privacy: dict, seconds: float) -> SweepResult:
    """Sorts by objective; how well the synthetic validation ranked trials against the oracle."""
    from scipy.stats import spearmanr

    done = [r for r in rows if _finite(r["objective"]) and r["status"] != "ERROR"]  # an errored trial is never picked
    done.sort(key=lambda r: -r["objective"])
    rest = [r for r in rows if r not in done]
    rho = None
    both = [r for r in done if _finite(r["oracle_accuracy"])]
    if len(both) >= 3:
        rho = float(spearmanr([r["objective"] for r in both], [r["oracle_accuracy"] for r in both]).statistic)
    best = done[0] if done else None
    best_oracle = max(both, key=lambda r: r["oracle_accuracy"]) if both else None
    return SweepResult(name, path, done + rest, val_privacy, rho, best, best_oracle, seconds)


def format_summary(res: SweepResult) -> str:
    cols = [("trial", 11), ("status", 7), ("layers", 6), ("clip", 8), ("batch", 5), ("lr", 8), ("epochs", 6),
            ("sigma", 7), ("eps", 6), ("objective", 9), ("oracle_accuracy", 15)]
    def fmt(v, w):
        if v is None:
            return "-".rjust(w)
        if isinstance(v, float):
            return (f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.4f}").rjust(w)
        return str(v)[-w:].rjust(w)
    lines = ["  ".join(c.rjust(w) for c, w in cols)]
    lines += ["  ".join(fmt(r.get(c), w) for c, w in cols) for r in res.rows]
    vp = res.validation_privacy
    lines.append(f"validation generator: (ε = {vp['eps']:.3f}, δ = {vp['delta']:g})-DP ({vp['accountant'].upper()}), "
                 f"layers {vp['layers']}; the objective is accuracy on its synthetic set, never on private data")
    if "privacy" in res.extra:
        from dpsearch.privacy.report import format_report

        lines.append(format_report(res.extra["privacy"]))
    if res.spearman is not None:
        lines.append(f"Spearman(objective, oracle accuracy) = {res.spearman:.3f} over {sum(1 for r in res.rows if _finite(r['objective']))} trials")
    if res.best:
        b, bo = res.best, res.best_oracle
        lines.append(f"selected by objective: {b['trial']} (layers {b['layers']}), oracle accuracy "
                     f"{100 * b['oracle_accuracy']:.2f}% (oracle: real test split, not DP)")
        if bo:
            lines.append(f"best oracle trial: {bo['trial']} (layers {bo['layers']}), oracle accuracy {100 * bo['oracle_accuracy']:.2f}%")
        lines.append(f"best model: {b['checkpoint']}/model")
    failed = [r for r in res.rows if r["status"] == "ERROR"]
    for r in failed:
        lines.append(f"failed: {r['trial']}: {r['error']}")
    lines.append(f"sweep {res.name}: {len(res.rows)} trials in {res.seconds / 60:.1f} min; results under {res.path}")
    if "mlflow" in res.extra:
        m = res.extra["mlflow"]
        lines.append(f"MLflow: {m['uri']} experiment {m['experiment']!r} (parent run {m['parent_run']}); "
                     f"`dpsearch ui` prints the address")
    return "\n".join(lines)
