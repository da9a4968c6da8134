"""Which privacy design a sweep runs, and what data and ε each of its parts gets: one class per design behind
one interface (its parts and data, whether the final stage trains again, its plan's statement), chosen once by
`plan()` from the DESIGNS registry.

- ``per-trial`` (`--eps-per-trial E`): every trial and the validation generator at E on all the data; the report
  gives the released model's ε, which is larger.
- ``composed`` (`--eps E --design composed`): the same parts on all the data, their ε solved so
  that their composition (RDP, or PLD where tighter) is E.
- ``slices`` (`--eps E`, the default): disjoint slices of the records (privacy/slices.py);
  trials compose to E on the tuning slice, the validation generator and the final run get E on their own
  slices, and the released model is (E, δ)-DP by parallel composition. With `validation.objective: count`
  the validation slice is not used to train a generator: every trial and free candidate is scored on its
  real records by a Gaussian count (privacy/noisy_count.py), the counts composed to E.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Optional

from dpsearch.config import ConfigError, FinetuneConfig, default_delta
from dpsearch.data import ImageSet
from dpsearch.privacy.noisy_count import NoisyCount, count_sigma
from dpsearch.privacy.slices import PARTS, SliceRule, hash_share, planned_sizes, share_of, split
from dpsearch.search.options import SweepOptions, validation_eps
from dpsearch.space import SearchSpace

log = logging.getLogger(__name__)

_PROBE = {"layers": "1-1", "clip": 1.0, "epochs": 1, "lr": 1e-3}  # a batch is added: the checks are on B, N and δ


@dataclass
class Design:
    """The parts of a sweep's privacy design. Subclasses say how they are planned and what they guarantee."""

    name: ClassVar[str]
    eps: float  # each trial's ε
    val_eps: float  # the validation generator's ε
    delta: float  # one δ for every part and run, from the public N
    trial_data: ImageSet
    validation_data: ImageSet
    final_data: Optional[ImageSet] = None  # slices only: the selected configuration is trained again on it
    final_eps: Optional[float] = None
    trial_batch_scale: float = 1.0  # trial batch = space batch × this: the final run's q on a smaller slice
    val_batch_scale: float = 1.0
    slices: dict = field(default_factory=dict)  # rule and planned (public) sizes, recorded in sweep.json
    count: Optional[NoisyCount] = None  # the counting objective on the validation slice, else scored on V
    # The public N every run of a part plans from (q, steps, δ checks), fixed before any record is read: the
    # part's planned size under slices, n under --n-private, None (the data's own N, as DP-SGD does) otherwise.
    n_public: dict = field(default_factory=lambda: {p: None for p in PARTS})
    share: dict = field(default_factory=dict)  # --n-private outside slices: {"keep", "salt"}, recorded in sweep.json

    @property
    def retrains(self) -> bool:
        """Whether the final stage trains the selected configuration again (else it releases the trial's model)."""
        return self.final_data is not None

    @property
    def counts(self) -> bool:
        """Whether trials are scored by noisy counts on real records (else on the DP synthetic validation set)."""
        return self.count is not None

    def fingerprint_data(self, private: ImageSet) -> ImageSet:
        """The records a resumed sweep must find unchanged."""
        return self.trial_data

    def n_recorded(self) -> int:
        """The public N sweep.json records (never a share's or a slice's exact count)."""
        return self.n_public["tuning"]

    def record(self) -> dict:
        """What sweep.json keeps of the design, so that a resumed sweep plans the same parts."""
        return {"n_private": self.n_recorded(), "share": self.share or None, "design": self.name, "slices": self.slices,
                "delta": self.delta}

    def describe(self) -> str:
        raise NotImplementedError

    def released(self, opts: SweepOptions, space: SearchSpace) -> str:
        """The released model's guarantee as planned, for `dpsearch sweep --plan`."""
        from dpsearch.privacy.report import coverage_statement, guarantee_for, reference_mechanism

        n = self.n_public["tuning"]
        val = reference_mechanism(space, self.val_eps, n, delta=self.delta)
        g = guarantee_for(space, self.eps, n, val, trials=None if opts.private_selection else opts.trials,
                          selection=opts.private_selection, mean_trials=opts.mean_trials, delta=self.delta)
        return coverage_statement(g)

    def probe_configs(self, space: SearchSpace) -> Iterator[tuple[FinetuneConfig, int]]:
        """(config, N) for the extreme configurations of every part, to catch batch > N or δ ≥ 1/N before
        training."""
        for b in space.params.batch.values():
            yield (space.finetune_config({**_PROBE, "batch": b}, self.eps, batch_scale=self.trial_batch_scale,
                                         delta=self.delta, n_public=self.n_public["tuning"]), len(self.trial_data))
            if self.retrains:
                yield (space.finetune_config({**_PROBE, "batch": b}, self.final_eps, delta=self.delta,
                                             n_public=self.n_public["final"]), len(self.final_data))
        if not self.counts:  # the validation generator's run; the counting objective trains nothing
            yield (space.reference_config(self.val_eps, batch_scale=self.val_batch_scale, delta=self.delta,
                                          n_public=self.n_public["validation"]), len(self.validation_data))


@dataclass
class PerTrial(Design):
    """Every trial and the validation generator at the given ε on all the data (or an --n-private share)."""

    name: ClassVar[str] = "per-trial"

    def describe(self) -> str:
        return f"per trial: every trial at ε = {self.eps:g}; the released model's ε (larger) is in the privacy report"

    @classmethod
    def plan(cls, opts: SweepOptions, space: SearchSpace, private: ImageSet, saved: Optional[dict],
             objective: str) -> Design:
        share = saved.get("share") if saved and saved.get("share") else _share(space, private)
        data = hash_share(private, share["keep"], share["salt"]) if share else private
        n = space.n_private if share else (space.n_public or len(private))  # never a share's exact count
        delta = space.delta if space.delta is not None else default_delta(n)
        eps, val = cls._eps(opts, space, n, delta, saved)
        return cls(eps, val, delta, data, data, n_public={p: n for p in PARTS}, share=share or {})

    @classmethod
    def _eps(cls, opts: SweepOptions, space: SearchSpace, n: int, delta: float, saved: Optional[dict]):
        eps = opts.eps if opts.eps is not None else space.eps
        return eps, validation_eps(opts, space, eps)


@dataclass
class Composed(PerTrial):
    """The per-trial parts with their ε solved so that their composition is the released total."""

    name: ClassVar[str] = "composed"

    def describe(self) -> str:
        return (f"composed: every trial and the validation generator at ε = {self.eps:.4f} on all the data, "
                f"composed to the released total")

    @classmethod
    def _eps(cls, opts: SweepOptions, space: SearchSpace, n: int, delta: float, saved: Optional[dict]):
        if saved:  # a resumed sweep keeps the ε it solved (its saved options carry it)
            return super()._eps(opts, space, n, delta, saved)
        from dpsearch.privacy.report import solve_per_trial_eps

        if space.validation.eps is not None:
            raise ConfigError(f"the space sets validation.eps = {space.validation.eps:g}, but --eps solves the "
                              f"validation generator's ε together with the trials'; remove one of them")
        log.info("solving the per-trial ε for a released-model total of ε = %g ...", opts.eps_total)
        per, g = solve_per_trial_eps(space, n, opts.eps_total,
                                     trials=None if opts.private_selection else opts.trials,
                                     selection=opts.private_selection, mean_trials=opts.mean_trials, delta=delta,
                                     cache=bool(space.n_public))  # remembered only where N is public
        log.info("--eps %g (composed): every trial and the validation generator get ε = %.4f (δ = %g); released "
                 "model: ε = %.3f by %s", opts.eps_total, per, g.delta, g.eps, g.accountant)
        return per, per


@dataclass
class Slices(Design):
    """Disjoint slices: tuning, validation and final parts of the records, each with its own ε."""

    name: ClassVar[str] = "slices"

    def fingerprint_data(self, private: ImageSet) -> ImageSet:
        return private  # the slices are cut from all of it

    def n_recorded(self) -> int:
        return self.slices["n_public"]

    def describe(self) -> str:
        s = self.slices["planned"]
        scoring = (f"the validation generator at ε = {self.val_eps:g} on its slice ({s['validation']})"
                   if not self.counts else
                   f"{self.slices['count']['queries']} Gaussian counts (σ = {self.count.sigma:.2f}) on the validation "
                   f"slice ({s['validation']} real records) scoring the trials and free candidates, composed to "
                   f"≤ {self.val_eps:g}")
        return (f"disjoint slices: {self.slices['trials']} trials at ε = {self.eps:.4f} each on the tuning slice "
                f"(planned {s['tuning']} records, composed to ≤ {self.final_eps:g}), {scoring}, the selected "
                f"configuration trained once at ε = {self.final_eps:g} on the final slice ({s['final']}); released "
                f"model ({self.final_eps:g}, {self.delta:g})-DP")

    def released(self, opts: SweepOptions, space: SearchSpace) -> str:
        return (f"released model: (ε = {self.final_eps:g}, δ = {self.delta:g})-DP for the whole search by parallel "
                f"composition over disjoint slices (planned sizes {self.slices['planned']})")

    @classmethod
    def plan(cls, opts: SweepOptions, space: SearchSpace, private: ImageSet, saved: Optional[dict],
             objective: str) -> Design:
        from dpsearch.privacy.report import solve_per_trial_eps

        if opts.private_selection:
            raise ConfigError("--private-selection cannot run on disjoint slices: repeat-and-select covers only the "
                              "selected trial, while the slices' guarantee covers every trial's outputs (the tracking "
                              "store), which would then be the composition of all trials on the tuning slice, above "
                              "--eps. Run `--eps E` without --private-selection (the search composes to E on its "
                              "slice), or `--eps E --design composed --sampler random --private-selection ...`")
        # (a resumed sweep's saved options carry the val_eps it recorded, the total: only a new sweep can ask for one)
        if not (saved and saved.get("slices")) and (opts.val_eps is not None or space.validation.eps is not None):
            raise ConfigError("a disjoint-slice search gives the validation generator the whole --eps on its own "
                              "slice; drop --val-eps / the space's validation.eps (or use --design composed)")
        total = float(opts.eps_total)
        got = (saved or {}).get("slices") or {}
        # Everything below plans from public numbers only (N and the rule's fractions, fixed once and recorded):
        # adding a record to one slice leaves the other parts' q, batch and σ as they were (docs/privacy.md).
        n_all = int(got.get("n_public") or space.n_public or len(private))
        keep = float(got.get("keep") or share_of(space.n_private, n_all))
        rule = SliceRule(**got["rule"]) if got else new_rule(space, n_all, keep)
        parts = split(private, rule, keep)
        planned = planned_sizes(n_all, rule, keep)
        delta = space.delta if space.delta is not None else default_delta(n_all)
        for p in PARTS:
            if delta >= 1.0 / planned[p]:
                raise ConfigError(f"δ = {delta:g} is not below 1/N of the {p} slice (planned {planned[p]} records); "
                                  f"use a smaller δ or larger slices")
        count_info = None  # planned before the slow ε solve, so its refusals come at once
        if got and not got.get("count"):
            objective = "generator"  # a sweep resumed as it started
        if objective == "count":
            count_info = got["count"] if got.get("count") else _count_plan(opts, space, total, delta)
        trial_scale = rule.tuning / rule.final
        val_scale = rule.validation / rule.final
        from dpsearch.space import scaled_batch

        for b in {*space.params.batch.values(), space.reference.batch}:  # before the slow ε solve: refused at once
            for part, scale in (("tuning", trial_scale), ("final", 1.0)):
                if scaled_batch(b, scale) > planned[part]:
                    raise ConfigError(f"batch size {b} is larger than the private set's {part} slice can hold "
                                      f"(planned {planned[part]} records, batch {scaled_batch(b, scale)} there); use "
                                      f"smaller batches or more private data")
        if saved and saved.get("options", {}).get("eps") is not None:
            per = float(saved["options"]["eps"])
        else:
            log.info("solving the per-trial ε on the tuning slice for a total of ε = %g ...", total)
            per, g = solve_per_trial_eps(space, **_tuning_solve(planned, total, opts.trials, trial_scale, delta),
                                         cache=bool(space.n_public))  # remembered only where N is public
            log.info("tuning slice: %d trials at ε = %.4f compose to ε = %.3f by %s", opts.trials, per, g.eps,
                     g.accountant)
        info = {"rule": rule.to_dict(), "keep": keep, "n_public": n_all, "planned": planned, "trials": opts.trials,
                "trial_batch_scale": trial_scale, "validation_batch_scale": val_scale}
        count = None
        if count_info is not None:
            info["count"] = count_info
            count = NoisyCount(parts["validation"], float(count_info["sigma"]), planned["validation"])
        return cls(per, total, delta, parts["tuning"], parts["validation"], parts["final"], total,
                   trial_scale, val_scale, info, count, n_public=dict(planned))


DESIGNS: dict[str, type[Design]] = {d.name: d for d in (PerTrial, Composed, Slices)}


def new_rule(space: SearchSpace, n_all: int, keep: float) -> SliceRule:
    """A new sweep's slices: the space's shares for its planned number of records (public), a fresh salt."""
    largest = max([*space.params.batch.values(), space.reference.batch])
    return SliceRule.new(**space.slices.fractions(max(1, int(round(n_all * keep))), largest))


def _tuning_solve(planned: dict, total: float, trials: int, trial_scale: float, delta: float) -> dict:
    """The arguments of the tuning slice's per-trial ε search (its K trials compose to the total there)."""
    return dict(n=planned["tuning"], eps_total=total, trials=trials, with_validation=False, batch_scale=trial_scale,
                delta=delta)


def slice_solve_args(space: SearchSpace, total: float, trials: int) -> dict:
    """The tuning-slice search a new `dpsearch sweep --eps total` of this space makes, from its public N alone
    (the shipped solve cache is made from it: privacy/solve_cache.py)."""
    if not space.n_public:
        raise ConfigError(f"space {space.name} declares no n_public: its slices are planned from the data")
    keep = share_of(space.n_private, space.n_public)
    rule = new_rule(space, space.n_public, keep)
    delta = space.delta if space.delta is not None else default_delta(space.n_public)
    return _tuning_solve(planned_sizes(space.n_public, rule, keep), total, trials, rule.tuning / rule.final, delta)


def design_name(opts: SweepOptions) -> str:
    if opts.eps_total is None:
        if opts.design not in (None, "per-trial"):
            raise ConfigError(f"--design {opts.design} needs --eps (the released model's ε), not --eps-per-trial")
        return "per-trial"
    if opts.design == "per-trial":
        raise ConfigError("--design per-trial takes --eps-per-trial, not --eps")
    return opts.design or "slices"


def plan(opts: SweepOptions, space: SearchSpace, private: ImageSet, saved: Optional[dict] = None) -> Design:
    """The design's parts, chosen once. `saved` is sweep.json of a sweep being resumed: its slices and ε are
    reused."""
    name = design_name(opts)
    objective = space.validation.objective
    if objective == "auto":
        objective = "count" if name == "slices" and not opts.private_selection and opts.scheduler == "none" else "generator"
    if objective == "count" and name != "slices":
        raise ConfigError("validation.objective: count scores trials on held-out private records, which only a "
                          "disjoint-slice search keeps apart: use --eps E (design slices) or objective: generator")
    return DESIGNS[name].plan(opts, space, private, saved, objective)


def _share(space: SearchSpace, private: ImageSet) -> Optional[dict]:
    """The --n-private cap outside slices: a hash-rule share with a fresh public salt (None: all records)."""
    import secrets

    keep = share_of(space.n_private, space.n_public or len(private))
    return {"keep": keep, "salt": secrets.token_hex(16)} if keep < 1 else None


def _count_plan(opts: SweepOptions, space: SearchSpace, total: float, delta: float) -> dict:
    """One count per trial and per free candidate, all on the validation slice, composed to the total."""
    if opts.private_selection:
        raise ConfigError("validation.objective: count needs a known number of trials; private selection draws K at "
                          "random. Use objective: generator with --private-selection")
    if opts.scheduler != "none":
        raise ConfigError("--scheduler asha stops trials on a per-epoch loss on the DP synthetic validation set, which "
                          "validation.objective: count does not make; use --scheduler none")
    queries = opts.trials + len(space.free.combinations())
    return {"queries": queries, "sigma": count_sigma(queries, total, delta)}
