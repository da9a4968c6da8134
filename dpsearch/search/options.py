"""What a sweep is asked to do, checked before anything starts; the number of trials K."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Optional

from dpsearch.config import ConfigError, check_eps_range
from dpsearch.privacy.search_cost import SELECTIONS
from dpsearch.space import SearchSpace

DESIGNS = ("per-trial", "composed", "slices")  # search/design.py
METRIC, MODE = "objective", "max"  # accuracy on the DP synthetic validation set, or the noisy held-out count


@dataclass
class SweepOptions:
    eps: Optional[float] = None  # --eps-per-trial: every trial's ε (the per-trial design); None: see eps_total
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
    prompt: Optional[str] = None  # overrides the space's prompt template (Stable Diffusion models)
    resolution: Optional[int] = None  # overrides the space's resolution (Stable Diffusion models)
    gpus_per_trial: Optional[float] = None  # default: 1/concurrency of a GPU when the cluster has GPUs
    private_selection: Optional[str] = None  # geometric | logarithmic | poisson: K is random, only the best released
    mean_trials: Optional[float] = None  # μ, the mean of K under private selection
    # --eps: the released model's ε (per-trial and validation ε solved from it); None with eps None: the space's eps
    eps_total: Optional[float] = None
    design: Optional[str] = None  # with --eps: slices (default) | composed; search/design.py
    release: bool = True  # end with the final model's released synthetic data set (search/final.py)
    # slices: the final run starts from the selected trial's DP weights instead of the pretrained model (search/final.py;
    # post-processing of the tuning part's output, docs/privacy.md)
    warm_start: bool = False
    progress: bool = True
    plan_only: bool = False  # --plan: print the design and stop before training

    def check(self) -> None:
        for flag, value in (("--eps-per-trial", self.eps), ("--val-eps", self.val_eps), ("--eps", self.eps_total)):
            if value is not None:
                try:
                    check_eps_range(value)
                except ConfigError as e:
                    raise ConfigError(f"{flag}: {e}") from None
        if self.eps_total is not None:
            if self.eps is not None or self.val_eps is not None:
                raise ConfigError("give either --eps (the released model's ε) or --eps-per-trial (every trial's), not both")
        if self.design not in (None, *DESIGNS):
            raise ConfigError(f"--design must be slices, composed or per-trial, got {self.design}")
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
        # K = 0 would train nothing; redrawing conditions K on K ≥ 1, which the report accounts for by
        # computing the bound at δ·P(K ≥ 1) (search_cost.poisson_k_at_least_one). Drawn here, never rerun by hand.
        while True:
            k = int(rng.poisson(mean))
            if k >= 1:
                return k
    gamma = rdp_lib._gamma_truncated_negative_binomial(SELECTIONS[selection], mean)
    if selection == "geometric":
        return int(rng.geometric(gamma))
    return int(rng.logseries(1 - gamma))  # logarithmic: P(K = k) ∝ (1 - γ)^k / k


def tpe_startup_trials(trials: int) -> int:
    """Random trials before TPE models the scores: half the budget, 2 to 10. Optuna's default of 10
    would make a default 8-trial sweep pure random search while calling itself TPE."""
    return max(2, min(10, trials // 2))
