"""The trials stage's Ray Tune objects: the Tuner (new, or restored from Ray's experiment state), its search
algorithm (Optuna through Ray Tune's OptunaSearch) and scheduler."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Optional

from dpsearch.config import ConfigError
from dpsearch.data import ImageSet
from dpsearch.search.options import METRIC, MODE, SweepOptions, tpe_startup_trials
from dpsearch.space import SearchSpace, define_by_run

if TYPE_CHECKING:
    from dpsearch.search.sweep import Sweep

log = logging.getLogger(__name__)


def make_tuner(sweep: "Sweep", validation: Optional[ImageSet]):
    """Restores the sweep's Tuner where Ray's experiment state allows; else a new one. Trials already started
    stay counted either way (search/trial_counter.py), so a lost state cannot hide them."""
    from ray import tune

    from dpsearch.search.trainable import dp_trial
    from dpsearch.search.trial_counter import TrialCounter

    opts, design, res = sweep.opts, sweep.design, sweep.resources
    trainable = tune.with_resources(
        tune.with_parameters(dp_trial, model_files=sweep.model_files, private=design.trial_data, validation=validation,
                             oracle=sweep.oracle, space_json=sweep.space.model_dump_json(), eps=design.eps,
                             seed=opts.seed, threads=res["threads"], batch_scale=design.trial_batch_scale,
                             delta=design.delta, count=design.count, n_public=design.n_public["tuning"],
                             sweep={"name": sweep.name, "storage": sweep.storage}),
        {"cpu": res["cpu"], "gpu": res["gpu"]})
    if tune.Tuner.can_restore(sweep.sweep_uri):
        return tune.Tuner.restore(sweep.sweep_uri, trainable=trainable, resume_unfinished=True,
                                  resume_errored=sweep.retry_errored)
    started = TrialCounter(sweep.meta.uri()).started()
    if started:  # a resumed sweep whose Ray state was lost
        if opts.private_selection:
            raise ConfigError(f"sweep {sweep.name}: Ray's experiment state cannot be restored, and private selection "
                              f"cannot start its K = {opts.trials} trials again (repeat-and-select would no longer "
                              f"hold). Start a new sweep.")
        log.warning("sweep %s: Ray's experiment state cannot be restored; starting %d new trials. The %d trials "
                    "already started stay counted in the released ε.", sweep.name, opts.trials, len(started))
    from dpsearch.search.ray_session import tune_file_loggers

    # Ray's result files without its TensorBoard logger (and the hint it prints); inside ray_session()
    callbacks = [TrialCounter(sweep.meta.uri()), *tune_file_loggers()]
    if sweep.uri:
        from dpsearch.tracking import TrialTracker

        callbacks.append(TrialTracker(sweep.uri, sweep.name, sweep.record.mlflow_parent_run))
    return tune.Tuner(trainable, tune_config=tune_config(opts, sweep.space, sweep.first),
                      run_config=tune.RunConfig(
                          # Ray's status table lists every trial: not under private selection
                          name=sweep.name, storage_path=sweep.storage,
                          verbose=1 if opts.progress and not opts.private_selection else 0,
                          failure_config=tune.FailureConfig(max_failures=0), callbacks=callbacks,
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def tune_config(opts: SweepOptions, space: SearchSpace, first: list[dict] | None = None):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory": not news
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
    # reuse_actors: a finished trial's process runs the next one, which then skips starting a Python process,
    # importing torch, diffusers and Opacus and fetching the sweep's data and model from Ray's object store
    # (bench/results/main_job-*.json). Every trial still builds its own model, config and fresh DP randomness.
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=opts.trials,
                           max_concurrent_trials=opts.concurrency, reuse_actors=True)
