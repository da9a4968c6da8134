"""A sweep as named stages of one object, in the order they run:

1. plan       — check the input, choose the privacy design (search/design.py), compute each part's ε and δ
2. record     — the sweep's record in its storage (search/record.py) and its MLflow parent run
3. validation — the DP synthetic validation set, or the counting objective's record (search/validation.py)
4. trials     — Ray Tune + Optuna, each trial one DP fine-tune (search/tuner.py, search/trainable.py)
5. selection  — the configuration the objective picks (search/summary.py, search/selection.py)
6. final      — final run, free choice, release: one Ray task (search/final.py)
7. report     — the privacy report of the whole search, composed from what the storage holds

`Sweep.new` and `Sweep.resume` are the two ways to construct one; the stages do not ask which was used.
It orchestrates; the steps live in the modules named above.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from dpsearch.config import ConfigError, parse_layers
from dpsearch.data import ImageSet
from dpsearch.search.design import Design, plan
from dpsearch.search.options import SweepOptions, draw_trials
from dpsearch.search.record import FILE as RECORD_FILE, SweepRecord
from dpsearch.search.summary import SweepResult
from dpsearch.space import SearchSpace, load_space
from dpsearch.storage import Store

log = logging.getLogger(__name__)


def run_sweep(opts: SweepOptions, resume: Optional[str] = None, retry_errored: bool = False) -> SweepResult:
    """`dpsearch sweep`: a new sweep, or the sweep `resume` continued, run stage by stage."""
    sweep = Sweep.resume(opts, resume, retry_errored) if resume else Sweep.new(opts)
    return sweep.run()


class Sweep:
    def __init__(self, opts: SweepOptions, space: SearchSpace, model_dir: Path, private: ImageSet,
                 oracle: Optional[ImageSet], n_layers: int, design: Design, retry_errored: bool = False):
        self.opts, self.space, self.model_dir, self.private, self.oracle = opts, space, model_dir, private, oracle
        self.n_layers, self.design, self.retry_errored = n_layers, design, retry_errored
        from dpsearch.search.first_trial import first_points

        self.first = first_points(design, space, n_layers)  # the reference as trial 1: the selection may keep it
        budget = f"eps{opts.eps_total:g}" if opts.eps_total else f"epspertrial{design.eps:g}"  # what the user asked
        self.name = opts.name or f"{space.name}-{budget}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.storage: Optional[str] = opts.storage
        self.uri: Optional[str] = None  # MLflow
        self.record: Optional[SweepRecord] = None
        self.resources: dict = {}

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def new(cls, opts: SweepOptions) -> "Sweep":
        opts.check()
        space = load_space(opts.space)
        if opts.eps is None and opts.eps_total is None:
            opts = replace(opts, eps_total=space.eps)  # the space's eps is the released model's, as --eps is
        return cls._planned(opts, space, None)

    @classmethod
    def resume(cls, opts: SweepOptions, name: str, retry_errored: bool = False) -> "Sweep":
        """The sweep `name` as it started, from its record; the services of this call (progress, address,
        storage, tracking) are this run's."""
        from dpsearch.search.connect import connect_services

        opts.check()
        storage, uri = connect_services(opts)
        rec = SweepRecord.load(Store(storage).child(name, "dpsearch"), name, storage)
        saved = rec.as_dict()
        opts = replace(rec.options, progress=opts.progress, address=opts.address, storage=storage,
                       tracking=opts.tracking, plan_only=opts.plan_only)
        if retry_errored and opts.private_selection:
            raise ConfigError(f"sweep {name} runs private selection: retrying an errored trial would run one of its K "
                              f"repetitions twice, which repeat-and-select does not cover. Resume without "
                              f"--retry-errored (a crashed run counts as one that returned nothing)")
        sweep = cls._planned(opts, SearchSpace(**saved["space"]), saved, retry_errored)
        sweep.uri, sweep.record = uri, rec
        return sweep

    @classmethod
    def _planned(cls, opts: SweepOptions, space: SearchSpace, saved: Optional[dict], retry_errored: bool = False):
        """1. plan: everything that can be wrong with the input fails here, before any training (the layers
        before the ε solve)."""
        from dpsearch.inputs import resolve_inputs
        from dpsearch.models import attention_modules, load_ldm

        inputs = resolve_inputs(opts.model or space.model, space.private, opts.prompt or space.prompt,
                                opts.resolution or space.resolution)  # an SD pipeline is converted here, once
        probe = load_ldm(inputs.model)
        n_layers = len(attention_modules(probe.unet))
        space.params.layers.check_model(n_layers)
        parse_layers(space.reference.layers, n_layers)
        del probe
        if not opts.address:
            from dpsearch.search.ray_session import local_cpus

            local_cpus()  # a bad $DPSEARCH_CPUS is refused here, before anything is stored
        from dpsearch.privacy.sigma_memo import allowed

        with allowed(bool(space.n_public)):  # calibrated σ remembered only where N is public, as the solve cache
            design = plan(opts, space, inputs.private, saved)
        for cfg, n in design.probe_configs(space):
            cfg.check_against_data(n)
        if opts.warm_start and not design.retrains:
            raise ConfigError(f"--warm-start starts the final run on the final slice from the selected trial's weights; "
                              f"this sweep's design ({design.describe()}) has no final run and releases the selected "
                              f"trial's model itself. Use it with --eps and the disjoint-slice design")
        return cls(replace(opts, eps=design.eps), space, Path(inputs.model), inputs.private, inputs.test, n_layers,
                   design, retry_errored)

    # -- the stages --------------------------------------------------------------------------------------------

    def plan_text(self) -> str:
        """`dpsearch sweep --plan`: the design and the released guarantee it plans, computed by the same
        functions the sweep runs, with nothing trained or stored."""
        from dpsearch.search.wall_time import estimate

        return "\n".join([f"sweep {self.name}: plan only (nothing trained, nothing stored)",
                          f"space {self.space.name}: {self.space.description}; model with {self.n_layers} attention modules",
                          f"design: {self.design.describe()}", self.design.released(self.opts, self.space),
                          estimate(self.design, self.space, self.model_dir, self.opts)])

    def run(self) -> SweepResult:
        if self.opts.plan_only:
            return SweepResult(self.name, "", [], {}, None, None, 0.0, {"plan": self.plan_text()})
        from dpsearch.privacy.sigma_memo import allowed
        from dpsearch.search.ray_session import ray_session
        from dpsearch.search.resources import node_env

        self.start()
        t0, status = time.time(), "FAILED"
        try:
            with allowed(bool(self.space.n_public)), ray_session(self.opts.address,
                                                                  runtime_env=node_env(self.opts.address)):
                self.place()
                validation, val_privacy = self.validation()
                grid = self.trials(validation)
                result = self.selection(grid, val_privacy, t0)
                if self.opts.release and result.best:
                    result.extra["final"] = self.final(result.best, validation)
                status = "FINISHED"
        finally:
            self.stop(t0, status)
        return self.report(result, t0)

    def start(self) -> None:
        """2. record: the sweep's record in its storage, its fingerprints, K under private selection, the MLflow
        parent run. A resumed sweep checks that its data, model and space are those it started with."""
        from dpsearch.fingerprints import check_resume, files_fingerprint, private_fingerprint, text_fingerprint
        from dpsearch.search.model_files import pack_model
        from dpsearch.search.connect import connect_services

        if self.record is None:
            self.storage, self.uri = connect_services(self.opts)
            if self.meta.exists(RECORD_FILE):
                raise ConfigError(f"a sweep named {self.name!r} already exists under {self.storage}: use --resume "
                                  f"{self.name} or another --name")
            from ray import tune

            if tune.Tuner.can_restore(self.sweep_uri):  # the tuner restores Ray state it finds: never a stranger's
                raise ConfigError(f"Ray Tune state of a sweep named {self.name!r} exists under {self.storage} without "
                                  f"its sweep.json: use another --name, or delete {self.sweep_uri}")
        self.model_files = pack_model(self.model_dir)
        resumed = self.record is not None
        # salted per sweep, so the fingerprints of two sweeps on the same data cannot be linked to each other
        salt = self.record.fingerprints.get("salt") if resumed else secrets.token_hex(16)
        data = self.design.fingerprint_data(self.private)
        fingerprints = {"private": private_fingerprint(data.images, data.labels, create_key=not resumed, salt=salt),
                        "model": files_fingerprint(self.model_files), "space": text_fingerprint(space_json(self.space, self.record.space if resumed else None)),
                        "salt": salt}
        if resumed:
            check_resume(self.record.fingerprints, fingerprints, self.name)
        else:
            opts = self.opts
            if opts.private_selection:
                opts = replace(opts, trials=draw_trials(opts.private_selection, opts.mean_trials))
                # K stays out of the log and of everything released: repeat-and-select holds only while K is hidden.
                log.info("private selection (%s, mean %g): K drawn from OS entropy; it is kept in the sweep's storage "
                         "only (the tracking store), never in the release", opts.private_selection, opts.mean_trials)
            self.opts = opts = replace(opts, val_eps=self.design.val_eps, name=self.name, model=str(self.model_dir),
                                       storage=self.storage)
            self.record = SweepRecord(options=replace(opts, tracking=None), space=json.loads(self.space.model_dump_json()),
                                      fingerprints=fingerprints, **self.design.record())
        log.info("design: %s", self.design.describe())
        if self.uri:
            from dpsearch.tracking import start_parent

            self.record.mlflow_parent_run = start_parent(self.uri, self.name, self.record.mlflow_parent_run,
                                                         _parent_params(self.record), self.space.model_dump_json(indent=2))
        self.record.save(self.meta)

    def place(self) -> None:
        """How many trials run at once, decided where they run (a resumed sweep decides again), and each trial's
        share of the node. Under private selection not capped at K, and not logged: min(cores, K) would reveal
        a small K."""
        from dpsearch.search.resources import auto_concurrency, trial_resources

        if self.opts.concurrency is None:
            ps = self.opts.private_selection
            self.opts = replace(self.opts, concurrency=auto_concurrency(None if ps else self.opts.trials))
            self.record.concurrency_used = self.opts.concurrency
            if not ps:
                log.info("running %d trials at once (auto; --concurrency sets it)", self.opts.concurrency)
                if self.uri:
                    from mlflow import MlflowClient

                    MlflowClient(self.uri).set_tag(self.record.mlflow_parent_run, "concurrency_used", self.opts.concurrency)
        self.resources = trial_resources(self.opts)

    def validation(self) -> tuple[Optional[ImageSet], dict]:
        """3. validation: V, made once per sweep and stored with it, or the counting objective's record."""
        from dpsearch.search.validation import load_or_make_validation

        return load_or_make_validation(self.meta, self.model_files, self.design, self.space, self.opts.seed,
                                       self.resources)

    def trials(self, validation: Optional[ImageSet]):
        """4. trials: Ray Tune's result grid, restored where Ray's experiment state allows."""
        from dpsearch.search.tuner import make_tuner

        return make_tuner(self, validation).fit()

    def selection(self, grid, val_privacy: dict, t0: float) -> SweepResult:
        """5. selection: trials sorted by objective, the selected one (search/selection.py), stored."""
        from dpsearch.search.summary import rows_of, summarize

        result = summarize(self.name, self.sweep_uri, rows_of(grid), val_privacy, time.time() - t0,
                           reference=self.space.reference if self.first else None, n_layers=self.n_layers,
                           margin=self.space.validation.reference_margin)
        self.meta.write_text("summary.json", json.dumps(asdict(result), indent=2, default=str))
        return result

    def final(self, best: dict, validation: Optional[ImageSet]) -> dict:
        """6. final run, free choice, release (search/final.py), once per sweep."""
        from dpsearch.search.final import finish

        # Under private selection the card is titled by the space: the sweep's name carries its start time,
        # which against the release's would hint at K.
        title = f"{self.space.name} (private selection)" if self.opts.private_selection else None
        return finish(self.meta, self.sweep_uri, self.model_files, self.space, best, self.design, validation,
                      self.oracle, self.opts.seed, self.resources, title, self.opts.warm_start)

    def stop(self, t0: float, status: str) -> None:
        """Time across every run of this sweep, interrupted ones included; the parent run ends KILLED unless
        the sweep finished."""
        self.record.elapsed_s += time.time() - t0
        try:
            self.record.save(self.meta)
        except Exception as e:  # noqa: BLE001 - bookkeeping only: never hide the error that got us here
            log.warning("could not record the sweep's elapsed time: %s", e)
        if self.uri and status != "FINISHED":
            from mlflow import MlflowClient

            MlflowClient(self.uri).set_terminated(self.record.mlflow_parent_run, "KILLED")

    def report(self, result: SweepResult, t0: float) -> SweepResult:
        """7. report: the privacy of the whole search from the storage (every trial start and stage attempt),
        in the summary and on the MLflow parent run."""
        from dpsearch.privacy.report import format_report
        from dpsearch.sweep_store import sweep_report

        result.seconds = time.time() - t0
        result.extra["elapsed_s"] = self.record.elapsed_s
        self.meta.write_text("summary.json", json.dumps(asdict(result), indent=2, default=str))
        result.extra["privacy"] = sweep_report(self.sweep_uri)
        self.meta.write_text("privacy_report.json", json.dumps(result.extra["privacy"], indent=2))
        if self.uri:
            from dpsearch.tracking import finish_parent, sweep_addresses

            parent = self.record.mlflow_parent_run
            finish_parent(self.uri, parent, json.loads(json.dumps(asdict(result), default=str)), result.extra["privacy"],
                          format_report(result.extra["privacy"]), final=result.extra.get("final"))
            result.extra["mlflow"] = {"uri": self.uri, "experiment": self.name, "parent_run": parent,
                                      **sweep_addresses(self.uri, self.name)}
        return result

    # -- where things are --------------------------------------------------------------------------------------

    @property
    def sweep_uri(self) -> str:
        return Store(self.storage).uri(self.name)

    @property
    def meta(self) -> Store:
        return Store(self.storage).child(self.name, "dpsearch")


def _parent_params(rec: SweepRecord) -> dict:
    o = rec.options
    trials = "hidden (private selection)" if o.private_selection else o.trials
    return {"eps": o.eps, "val_eps": o.val_eps, "space": rec.space["name"], "trials": trials,
            "sampler": o.sampler, "scheduler": o.scheduler, "concurrency": o.concurrency or "auto", "seed": o.seed,
            "private_selection": o.private_selection, "mean_trials": o.mean_trials,
            "n_private": rec.n_private, "storage": o.storage, "model": o.model}


def space_json(space: SearchSpace, recorded: Optional[dict] = None) -> str:
    """The space as its fingerprint reads it. On resume, without the fields a newer dpsearch added since the sweep
    recorded its space (they took their defaults when the record was read back): a sweep started by an older
    version still resumes, and any field the record has must still match."""
    if recorded is None:
        return space.model_dump_json()

    def absent(now: dict, then: dict):
        out = {}
        for k, v in now.items():
            if k not in then:
                out[k] = True
            elif isinstance(v, dict) and isinstance(then[k], dict) and (sub := absent(v, then[k])):
                out[k] = sub
        return out

    return space.model_dump_json(exclude=absent(space.model_dump(), recorded) or None)
