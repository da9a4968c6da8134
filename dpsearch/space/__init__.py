"""Search spaces are YAML files (search_spaces/*.yaml): typed here, turned into an Optuna define-by-run.

A space fixes what every trial shares (data, model, ε, δ, sampling, evaluation, the validation
generator's reference configuration) and says what varies (layer range, C, B, lr, epochs, and the method:
whole attention modules or LoRA adapters of rank r). The value types live in space/params.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from dpsearch.config import EPS_MAX, ConfigError, _Strict, EvaluateConfig, FinetuneConfig, SampleConfig

from dpsearch.space.params import (FloatChoice, FloatFixed, FloatParam, IntChoice, IntFixed, IntParam, IntRange,
                                   LayerSpace, LogUniform, MethodSpace, _float_param, _int_param)


class ValidationGenerator(_Strict):
    """The validation generator's configuration (one DP fine-tune, not a candidate)."""

    layers: str = "all"
    clip: float = Field(0.01, gt=0)
    batch: int = Field(1000, gt=0)
    lr: float = Field(5e-4, gt=0)
    epochs: int = Field(2, gt=0)
    multiplicity: int = Field(1, ge=1, le=64)  # noise draws per image per step (FinetuneConfig.multiplicity)


class Params(_Strict):
    layers: LayerSpace
    clip: FloatParam
    batch: IntParam
    lr: FloatParam
    epochs: IntParam
    method: MethodSpace = MethodSpace(value="attention")  # whole modules, or LoRA adapters on their projections
    rank: IntParam = IntFixed(value=8)  # LoRA rank; drawn only in trials whose method is lora
    # noise draws per image per step, averaged before clipping: privacy-neutral (σ does not depend on it), k× compute
    multiplicity: IntParam = IntFixed(value=1)

    @field_validator("clip", "lr", mode="before")
    @classmethod
    def _floats(cls, v, info):
        return v if isinstance(v, BaseModel) else _float_param(info.field_name, v)

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v):
        return MethodSpace(value=v) if isinstance(v, str) else v

    @field_validator("batch", "epochs", "rank", "multiplicity", mode="before")
    @classmethod
    def _ints(cls, v, info):
        return v if isinstance(v, BaseModel) else _int_param(info.field_name, v)


class Validation(_Strict):
    # generator: trials are scored on a DP synthetic set V; count (disjoint slices only): on the validation
    # slice's real records through accounted Gaussian counts (privacy/noisy_count.py); auto: count where it
    # applies (slices, a fixed number of trials, no ASHA), else generator (search/design.py)
    objective: Literal["auto", "generator", "count"] = "auto"
    per_class: int = Field(100, gt=0)
    eps: Optional[float] = Field(None, gt=0, le=EPS_MAX)  # the validation generator's ε; default: the sweep's
    # objective count: the reference configuration (trial 1) is released unless a trial beats it by this much
    # (accuracy, 0.03 = 3 points; search/selection.py says why); 0 = plain best objective
    reference_margin: float = Field(0.03, ge=0, lt=1)


VALIDATION_CAP = 0.25  # the most min_validation may take: the final run keeps at least the rest


class Slices(_Strict):
    """Shares of the private records for a disjoint-slice search (privacy/slices.py)."""

    tuning: float = Field(0.1, gt=0, lt=1)
    validation: float = Field(0.1, gt=0, lt=1)
    final: float = Field(0.8, gt=0, lt=1)
    # Records the validation slice holds at least (0: the share as given). The counting objective's sampling error
    # on n records is about sqrt(p(1-p)/n), 3 points at n = 250: more than the spread of the trials it ranks
    # (docs/results.md). On small data the share grows to this many records, up to VALIDATION_CAP of them, taken
    # from the final share; the tuning share is unchanged. A function of the public N only.
    min_validation: int = Field(1000, ge=0)

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.tuning + self.validation + self.final - 1) > 1e-9:
            raise ValueError(f"slices must sum to 1, got {self.tuning + self.validation + self.final:g}")
        return self

    def fractions(self, n: int, batch: int = 0) -> dict[str, float]:
        """The shares a sweep on n (public) records cuts: the validation share raised to hold min_validation
        records where the given share holds fewer, never above VALIDATION_CAP nor leaving the final share below
        the tuning share or too small for `batch` (the space's largest batch, the reference's included)."""
        given = {"tuning": self.tuning, "validation": self.validation, "final": self.final}
        want = min(self.min_validation / n, VALIDATION_CAP) if n > 0 else 0.0
        grow = min(want - self.validation, self.final - max(self.tuning, batch / n if n > 0 else 0.0))
        if grow <= 0:
            return given
        return {**given, "validation": self.validation + grow, "final": self.final - grow}


class Free(_Strict):
    """Post-processing of a DP model, searched after the search on the sweep's objective: free on the DP
    validation set; one accounted count each on the validation slice (objective: count)."""

    guidance: list[float] = Field([3.0], min_length=1)
    steps: list[int] = Field([10], min_length=1)

    @field_validator("guidance")
    @classmethod
    def _g(cls, v):
        if any(not math.isfinite(g) or g < 0 for g in v):
            raise ValueError(f"guidance values must be ≥ 0, got {v}")
        return sorted(set(v))

    @field_validator("steps")
    @classmethod
    def _s(cls, v):
        if any(s < 1 for s in v):
            raise ValueError(f"steps must be ≥ 1, got {v}")
        return sorted(set(v))

    def combinations(self) -> list[dict]:
        return [{"guidance": g, "steps": s} for g in self.guidance for s in self.steps]


class Release(_Strict):
    """What the sweep releases at its end: n synthetic images from the selected model (post-processing)."""

    n: int = Field(60000, gt=0)


def scaled_batch(batch: int, scale: float) -> int:
    """A trial's batch on a slice: the same sampling rate q as `batch` on the final slice (at least 1)."""
    return max(1, int(round(batch * scale)))


class SearchSpace(_Strict):
    name: str
    description: str = ""
    private: str = "mnist"
    n_private: Optional[int] = Field(None, gt=0)
    # The private set's declared public size: every q, batch and δ is planned from it, so the plan does not
    # depend on the data at all (add/remove DP without the convention). None: its number of records, the
    # convention of DP-SGD libraries (N treated as public).
    n_public: Optional[int] = Field(None, gt=0)
    model: Optional[str] = None  # pretrained model dir or hub id; default: the embedded pretrained model
    # Stable Diffusion-format models: each class's prompt ({label} = its name) and the training resolution
    prompt: Optional[str] = None
    resolution: Optional[int] = Field(None, gt=0)
    eps: float = Field(5.0, gt=0)
    delta: Optional[float] = Field(None, gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    physical_batch: int = Field(128, gt=0)
    # EMA decay cap of every fine-tune's weights (trials, reference, final run): post-processing, no privacy
    # cost (FinetuneConfig.ema); None samples the last noisy iterate
    ema: Optional[float] = Field(None, gt=0, lt=1)
    # learning-rate schedule of every fine-tune (FinetuneConfig.lr_schedule): public, no privacy cost
    lr_schedule: Literal["constant", "cosine"] = "constant"
    params: Params
    reference: ValidationGenerator = ValidationGenerator()  # YAML key `reference`
    validation: Validation = Validation()
    sample: SampleConfig = SampleConfig(per_class=200)
    evaluate: EvaluateConfig = EvaluateConfig()
    slices: Slices = Slices()
    free: Free = Free()
    release: Release = Release()

    def finetune_config(self, trial: dict, eps: float, seed: int = 0, batch_scale: float = 1.0,
                        delta: Optional[float] = None, n_public: Optional[int] = None) -> FinetuneConfig:
        """The FinetuneConfig of one trial from its sampled values (batch scaled on a tuning slice; n_public: the
        public N its plan uses, see FinetuneConfig)."""
        method = trial.get("method", "attention")
        rank = {"rank": int(trial["rank"])} if method == "lora" and trial.get("rank") is not None else {}
        return FinetuneConfig(eps=eps, delta=delta if delta is not None else self.delta, layers=trial["layers"],
                              method=method, **rank, clip=float(trial["clip"]), batch=scaled_batch(int(trial["batch"]), batch_scale),
                              epochs=int(trial["epochs"]), lr=float(trial["lr"]), physical_batch=self.physical_batch,
                              multiplicity=int(trial.get("multiplicity", 1)), ema=self.ema, lr_schedule=self.lr_schedule,
                              n_private=self.n_private, n_public=n_public, accountant=self.accountant, seed=seed)

    def reference_config(self, eps: float, seed: int = 0, batch_scale: float = 1.0,
                         delta: Optional[float] = None, n_public: Optional[int] = None) -> FinetuneConfig:
        r = self.reference
        return FinetuneConfig(eps=eps, delta=delta if delta is not None else self.delta, layers=r.layers, clip=r.clip,
                              batch=scaled_batch(r.batch, batch_scale), epochs=r.epochs, lr=r.lr,
                              multiplicity=r.multiplicity, ema=self.ema, lr_schedule=self.lr_schedule, physical_batch=self.physical_batch, n_private=self.n_private, n_public=n_public,
                              accountant=self.accountant, seed=seed + 7919)


def load_space(path: str | Path) -> SearchSpace:
    """Reads and validates a space file; a malformed one is a ConfigError naming the field."""
    path = Path(path)
    if not path.exists():
        builtin = Path(__file__).resolve().parents[2] / "search_spaces" / f"{path.name.removesuffix('.yaml')}.yaml"
        if builtin.exists():
            path = builtin
        else:
            raise ConfigError(f"search space {path} not found (shipped spaces are in search_spaces/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"search space {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"search space {path} must be a mapping with at least 'name' and 'params'")
    try:
        return SearchSpace(**data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            msgs.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"search space {path} is malformed: " + "; ".join(dict.fromkeys(msgs))) from None


FIXED = (FloatFixed, IntFixed)


def _suggest(trial, name: str, p):
    if isinstance(p, LogUniform):
        return trial.suggest_float(name, *p.log_uniform, log=True)
    if isinstance(p, IntRange):
        return trial.suggest_int(name, p.low, p.high, step=p.step)
    if isinstance(p, (FloatChoice, IntChoice)):
        return trial.suggest_categorical(name, p.choice)
    return p.value


class DefineByRun:
    """Optuna define-by-run function for Ray Tune's OptunaSearch.

    A class, not a closure: Ray pickles the searcher (with this function) into every experiment
    checkpoint, and `--resume` unpickles it to bring TPE's history back.

    The layer range samples two ends in the same [low, high] and sorts them, so every sample is a
    valid a ≤ b and the distributions stay fixed across trials (TPE models them independently).
    """

    def __init__(self, space: "SearchSpace"):
        self.space = space

    def __call__(self, trial) -> dict:
        ps = self.space.params
        if ps.layers.choice is not None:
            layers = trial.suggest_categorical("layers", ps.layers.choice)
        else:
            x = trial.suggest_int("layer_end_1", ps.layers.low, ps.layers.high)
            y = trial.suggest_int("layer_end_2", ps.layers.low, ps.layers.high)
            layers = f"{min(x, y)}-{max(x, y)}"
        fixed = {"layers": layers}
        for name in ("clip", "batch", "lr", "epochs", "multiplicity"):
            p = getattr(ps, name)
            v = _suggest(trial, name, p)
            if isinstance(p, FIXED):
                fixed[name] = v
        m = ps.method
        method = trial.suggest_categorical("method", m.choice) if m.choice else m.value
        if m.choice is None:
            fixed["method"] = method
        if method == "lora":  # a conditional dimension: TPE models it over the LoRA trials only
            rank = _suggest(trial, "rank", ps.rank)
            if isinstance(ps.rank, IntFixed):
                fixed["rank"] = rank
        return fixed


def define_by_run(space: SearchSpace) -> DefineByRun:
    return DefineByRun(space)
