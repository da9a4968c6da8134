"""A sweep end to end: check the input, connect the services, make or load V, run Ray Tune + Optuna,
summarize and report the privacy of the whole search. It orchestrates; the steps live elsewhere."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from dpsearch.config import ConfigError, parse_layers
from dpsearch.paths import home
from dpsearch.search.model_files import pack_model
from dpsearch.search.design import plan
from dpsearch.search.first_trial import first_points
from dpsearch.search.options import METRIC, MODE, SweepOptions, draw_trials, tpe_startup_trials
from dpsearch.search.resources import auto_concurrency, node_env, trial_resources
from dpsearch.search.summary import SweepResult, rows_of, summarize
from dpsearch.search.trainable import dp_trial
from dpsearch.search.validation import load_or_make_validation
from dpsearch.space import SearchSpace, define_by_run, load_space
from dpsearch.storage import Store, check_storage

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


def run_sweep(opts: SweepOptions, resume: Optional[str] = None, retry_errored: bool = False) -> SweepResult:
    from ray import tune

    from dpsearch.inputs import resolve_inputs
    from dpsearch.models import attention_modules, load_ldm
    from dpsearch.fingerprints import check_resume, files_fingerprint, private_fingerprint, text_fingerprint
    from dpsearch.search.ray_session import ray_session
    from dpsearch.search.trial_counter import TrialCounter

    opts.check()
    saved = None
    if resume:
        storage, uri = connect_services(opts)
        meta = Store(storage).child(resume, "dpsearch")
        if not meta.exists("sweep.json"):
            raise ConfigError(f"no sweep named {resume!r} under {storage} (looked for {meta.uri('sweep.json')})")
        saved = json.loads(meta.read_text("sweep.json"))
        opts = SweepOptions(**{**saved["options"], "progress": opts.progress, "address": opts.address,
                               "storage": storage, "tracking": opts.tracking})
        if retry_errored and opts.private_selection:
            raise ConfigError(f"sweep {resume} runs private selection: retrying an errored trial would run one of its K "
                              f"repetitions twice, which repeat-and-select does not cover. Resume without "
                              f"--retry-errored (a crashed run counts as one that returned nothing)")
        space = SearchSpace(**saved["space"])
    else:
        space = load_space(opts.space)
        if opts.eps is None and opts.eps_total is None:
            opts.eps_total = space.eps  # the space's eps is the released model's, as --eps is
    inputs = resolve_inputs(opts.model or space.model, space.private, opts.prompt or space.prompt,
                            opts.resolution or space.resolution)  # an SD pipeline is converted here, once
    model_dir, private, oracle = inputs.model, inputs.private, inputs.test
    # Everything that can be wrong with the input fails before any training; the layers before the ε solve.
    probe = load_ldm(model_dir)
    n_layers = len(attention_modules(probe.unet))
    space.params.layers.check_model(n_layers)
    parse_layers(space.reference.layers, n_layers)
    del probe
    design = plan(opts, space, private, saved if resume else None)
    opts.eps = eps = design.eps
    val_eps = design.val_eps
    budget = f"eps{opts.eps_total:g}" if opts.eps_total else f"epspertrial{eps:g}"  # what the user asked for
    name = resume or opts.name or f"{space.name}-{budget}-{time.strftime('%Y%m%d-%H%M%S')}"
    for cfg_probe, n in _probe_configs(space, design):
        cfg_probe.check_against_data(n)
    if opts.plan_only:
        return _plan_result(opts, name, space, design, n_layers)
    if not resume:
        storage, uri = connect_services(opts)
        meta = Store(storage).child(name, "dpsearch")
        if meta.exists("sweep.json"):
            raise ConfigError(f"a sweep named {name!r} already exists under {storage}: use --resume {name} or another --name")

    if opts.private_selection and not resume:
        opts.trials = draw_trials(opts.private_selection, opts.mean_trials)
        # K stays out of the log and of everything released: repeat-and-select holds only while K is hidden.
        log.info("private selection (%s, mean %g): K drawn from OS entropy; it is kept in the sweep's storage only "
                 "(the tracking store), never in the release", opts.private_selection, opts.mean_trials)
    model_files = pack_model(Path(model_dir))
    fp_data = private if design.name == "slices" else design.trial_data  # what the design reads, as before slices
    if resume:
        saved = json.loads(meta.read_text("sweep.json"))
    # salted per sweep, so the fingerprints of two sweeps on the same data cannot be linked to each other
    salt = (saved or {}).get("fingerprints", {}).get("salt") if resume else secrets.token_hex(16)
    fingerprints = {"private": private_fingerprint(fp_data.images, fp_data.labels, create_key=not resume, salt=salt),
                    "model": files_fingerprint(model_files), "space": text_fingerprint(space.model_dump_json()),
                    "salt": salt}
    if resume:
        check_resume(saved.get("fingerprints", {}), fingerprints, name)
    else:
        saved = {"options": {**asdict(opts), "eps": eps, "val_eps": val_eps, "name": name, "model": str(model_dir),
                             "storage": storage, "tracking": None},
                 # the public N the trials plan from (never a share's or slice's exact count)
                 "n_private": design.n_public["tuning"] if design.name != "slices" else design.slices["n_public"],
                 "share": design.share or None, "design": design.name, "slices": design.slices, "delta": design.delta,
                 "space": json.loads(space.model_dump_json()), "fingerprints": fingerprints}
    log.info("design: %s", design.describe())
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
        with ray_session(opts.address, runtime_env=node_env(opts.address)):
            if opts.concurrency is None:  # saved options keep "auto": a resumed sweep decides again where it runs
                # under private selection not capped at K, and not logged: min(cores, K) would reveal a small K
                opts.concurrency = saved["concurrency_used"] = auto_concurrency(
                    None if opts.private_selection else opts.trials)
                if not opts.private_selection:
                    log.info("running %d trials at once (auto; --concurrency sets it)", opts.concurrency)
                if uri and not opts.private_selection:
                    from mlflow import MlflowClient

                    MlflowClient(uri).set_tag(parent, "concurrency_used", opts.concurrency)
            res = trial_resources(opts)
            validation, val_privacy = load_or_make_validation(meta, model_files, design, space, opts.seed, res)
            trainable = tune.with_resources(
                tune.with_parameters(dp_trial, model_files=model_files, private=design.trial_data, validation=validation,
                                     oracle=oracle, space_json=space.model_dump_json(), eps=eps, seed=opts.seed,
                                     threads=res["threads"], batch_scale=design.trial_batch_scale, delta=design.delta,
                                     count=design.count, n_public=design.n_public["tuning"],
                                     sweep={"name": name, "storage": storage}),
                {"cpu": res["cpu"], "gpu": res["gpu"]})
            callbacks = [TrialCounter(Store(storage).uri(name, "dpsearch"))]
            if uri:
                from dpsearch.tracking import TrialTracker

                callbacks.append(TrialTracker(uri, name, parent))
            path = Store(storage).uri(name)
            first = first_points(design, space, n_layers)  # the reference as trial 1: the selection may keep it
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
                tuner = tune.Tuner(trainable, tune_config=tune_config(opts, space, first),
                                   run_config=tune.RunConfig(
                                       # Ray's status table lists every trial: not under private selection
                                       name=name, storage_path=storage,
                                       verbose=1 if opts.progress and not opts.private_selection else 0,
                                       failure_config=tune.FailureConfig(max_failures=0), callbacks=callbacks,
                                       checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
            grid = tuner.fit()
            rows = rows_of(grid)
            result = summarize(name, Store(storage).uri(name), rows, val_privacy, time.time() - t0,
                               reference=space.reference if first else None, n_layers=n_layers,
                               margin=space.validation.reference_margin)
            meta.write_text("summary.json", json.dumps(asdict(result), indent=2, default=str))
            if opts.release and result.best:
                from dpsearch.search.final import finish

                result.extra["final"] = finish(meta, Store(storage).uri(name), model_files, space, result.best, design,
                                               validation, oracle, opts.seed, res,
                                               f"{space.name} (private selection)" if opts.private_selection else None)
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
    from dpsearch.privacy.report import format_report
    from dpsearch.sweep_store import sweep_report

    result.seconds = time.time() - t0
    result.extra["elapsed_s"] = saved["elapsed_s"]
    meta.write_text("summary.json", json.dumps(asdict(result), indent=2, default=str))
    result.extra["privacy"] = sweep_report(Store(storage).uri(name))
    meta.write_text("privacy_report.json", json.dumps(result.extra["privacy"], indent=2))
    if uri:
        from dpsearch.tracking import finish_parent

        finish_parent(uri, parent, json.loads(json.dumps(asdict(result), default=str)), result.extra["privacy"],
                      format_report(result.extra["privacy"]), final=result.extra.get("final"))
        from dpsearch.tracking import sweep_addresses

        result.extra["mlflow"] = {"uri": uri, "experiment": name, "parent_run": parent, **sweep_addresses(uri, name)}
    return result


def _plan_result(opts: SweepOptions, name: str, space: SearchSpace, design, n_layers: int) -> SweepResult:
    """`dpsearch sweep --plan`: the design and the released guarantee it plans, computed by the same functions
    the sweep runs, with nothing trained or stored."""
    from dpsearch.privacy.report import coverage_statement, guarantee_for, reference_mechanism

    lines = [f"sweep {name}: plan only (nothing trained, nothing stored)",
             f"space {space.name}: {space.description}; model with {n_layers} attention modules",
             f"design: {design.describe()}"]
    if design.name == "slices":
        lines.append(f"released model: (ε = {design.final_eps:g}, δ = {design.delta:g})-DP for the whole search by "
                     f"parallel composition over disjoint slices (planned sizes {design.slices['planned']})")
    else:
        n = design.n_public["tuning"]
        val = reference_mechanism(space, design.val_eps, n, delta=design.delta)
        g = guarantee_for(space, design.eps, n, val, trials=None if opts.private_selection else opts.trials,
                          selection=opts.private_selection, mean_trials=opts.mean_trials, delta=design.delta)
        lines.append(coverage_statement(g))
    return SweepResult(name, "", [], {}, None, None, 0.0, {"plan": "\n".join(lines)})


def _parent_params(saved: dict, eps: float, val_eps: float) -> dict:
    o = saved["options"]
    trials = "hidden (private selection)" if o.get("private_selection") else o["trials"]
    return {"eps": eps, "val_eps": val_eps, "space": saved["space"]["name"], "trials": trials,
            "sampler": o["sampler"], "scheduler": o["scheduler"], "concurrency": o["concurrency"] or "auto", "seed": o["seed"],
            "private_selection": o.get("private_selection"), "mean_trials": o.get("mean_trials"),
            "n_private": saved.get("n_private"), "storage": o["storage"], "model": o["model"]}


def _probe_configs(space: SearchSpace, design):
    """(config, N) for the extreme configurations of every part, to catch batch > N or δ ≥ 1/N before training."""
    probe = {"layers": "1-1", "clip": 1.0, "epochs": 1, "lr": 1e-3}
    for b in space.params.batch.values():
        yield (space.finetune_config({**probe, "batch": b}, design.eps, batch_scale=design.trial_batch_scale,
                                     delta=design.delta, n_public=design.n_public["tuning"]), len(design.trial_data))
        if design.final_data is not None:
            yield (space.finetune_config({**probe, "batch": b}, design.final_eps, delta=design.delta,
                                         n_public=design.n_public["final"]), len(design.final_data))
    if design.count is None:  # the validation generator's run; the counting objective trains nothing
        yield (space.reference_config(design.val_eps, batch_scale=design.val_batch_scale, delta=design.delta,
                                      n_public=design.n_public["validation"]), len(design.validation_data))


def tune_config(opts: SweepOptions, space: SearchSpace, first: list[dict] | None = None):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    if opts.private_selection:
        # Repeat-and-select assumes independent repetitions that no one can recompute: the configurations are
        # drawn from OS entropy, not from the public --seed, and the seed is recorded nowhere.
        sampler = optuna.samplers.RandomSampler(seed=secrets.randbits(32))
    elif opts.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=tpe_startup_trials(opts.trials))
    else:
        sampler = optuna.samplers.RandomSampler(seed=opts.seed)
    searcher = OptunaSearch(space=define_by_run(space), metric=METRIC, mode=MODE, sampler=sampler,
                            points_to_evaluate=first or None)
    scheduler = None
    if opts.scheduler == "asha":
        # Stops trials on the diffusion loss measured on the DP synthetic validation set (post-processing),
        # never on the private training loss.
        max_epochs = max(space.params.epochs.values())
        scheduler = ASHAScheduler(metric="val_loss", mode="min", time_attr="training_iteration",
                                  grace_period=1, max_t=int(max_epochs) + 1, reduction_factor=2)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=opts.trials,
                           max_concurrent_trials=opts.concurrency)
