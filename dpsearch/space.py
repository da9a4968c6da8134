"""Search spaces are YAML files (search_spaces/*.yaml): typed here, turned into an Optuna define-by-run.

A space fixes what every trial shares (data, model, ε, δ, sampling, evaluation, the validation
generator's reference configuration) and says what varies (layer range, C, B, lr, epochs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dpsearch.config import ConfigError, EvaluateConfig, FinetuneConfig, SampleConfig, parse_layers


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        return self


class LogUniform(_Strict):
    log_uniform: tuple[float, float]

    @model_validator(mode="after")
    def _order(self):
        lo, hi = self.log_uniform
        if not (0 < lo <= hi):
            raise ValueError(f"log_uniform bounds must satisfy 0 < low ≤ high, got {lo}, {hi}")
        return self


class Choice(_Strict):
    choice: list[Union[int, float, str]] = Field(min_length=1)


class Fixed(_Strict):
    value: Union[int, float, str]


Param = Union[LogUniform, Choice, Fixed]


class LayerSpace(_Strict):
    """Either an integer range in which start ≤ end are both searched, or a list of named ranges."""

    low: Optional[int] = Field(None, ge=1)
    high: Optional[int] = Field(None, ge=1)
    choice: Optional[list[str]] = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.choice is None) == (self.low is None or self.high is None):
            raise ValueError("give either low and high (searched a ≤ b) or choice: a list of ranges like '5-16'")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        for r in self.choice or []:
            parse_layers(r, 10_000)  # form only; the model's L is checked when the sweep starts
        return self

    def check_model(self, n_layers: int) -> None:
        for r in self.choice or [f"{self.low}-{self.high}"]:
            parse_layers(r, n_layers)


class Reference(_Strict):
    """The validation generator's configuration (one DP fine-tune, not a candidate)."""

    layers: str = "all"
    clip: float = Field(0.01, gt=0)
    batch: int = Field(1000, gt=0)
    lr: float = Field(5e-4, gt=0)
    epochs: int = Field(2, gt=0)


class Params(_Strict):
    layers: LayerSpace
    clip: Param
    batch: Param
    lr: Param
    epochs: Param


class Validation(_Strict):
    per_class: int = Field(100, gt=0)
    eps: Optional[float] = Field(None, gt=0)  # default: the sweep's ε


class SearchSpace(_Strict):
    name: str
    description: str = ""
    private: str = "mnist"
    n_private: Optional[int] = Field(None, gt=0)
    model: Optional[str] = None  # pretrained model dir or hub id; default: the embedded pretrained model
    eps: float = Field(5.0, gt=0)
    delta: Optional[float] = Field(None, gt=0, lt=1)
    accountant: Literal["prv", "rdp"] = "prv"
    physical_batch: int = Field(128, gt=0)
    params: Params
    reference: Reference = Reference()
    validation: Validation = Validation()
    sample: SampleConfig = SampleConfig(per_class=200)
    evaluate: EvaluateConfig = EvaluateConfig()

    def finetune_config(self, trial: dict, eps: float, seed: int = 0) -> FinetuneConfig:
        """The FinetuneConfig of one trial from its sampled values."""
        return FinetuneConfig(eps=eps, delta=self.delta, layers=trial["layers"], clip=float(trial["clip"]),
                              batch=int(trial["batch"]), epochs=int(trial["epochs"]), lr=float(trial["lr"]),
                              physical_batch=self.physical_batch, n_private=self.n_private,
                              accountant=self.accountant, seed=seed)

    def reference_config(self, eps: float, seed: int = 0) -> FinetuneConfig:
        r = self.reference
        return FinetuneConfig(eps=eps, delta=self.delta, layers=r.layers, clip=r.clip, batch=r.batch, epochs=r.epochs,
                              lr=r.lr, physical_batch=self.physical_batch, n_private=self.n_private,
                              accountant=self.accountant, seed=seed + 7919)


def load_space(path: str | Path) -> SearchSpace:
    """Reads and validates a space file; a malformed one is a ConfigError naming the field."""
    path = Path(path)
    if not path.exists():
        builtin = Path(__file__).resolve().parent.parent / "search_spaces" / f"{path.name.removesuffix('.yaml')}.yaml"
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
            where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("LogUniform", "Choice", "Fixed")))
            msgs.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"search space {path} is malformed: " + "; ".join(dict.fromkeys(msgs))) from None


def _suggest(trial, name: str, p: Param):
    if isinstance(p, LogUniform):
        return trial.suggest_float(name, *p.log_uniform, log=True)
    if isinstance(p, Choice):
        return trial.suggest_categorical(name, p.choice)
    return p.value


class DefineByRun:
    """Optuna define-by-run function for Ray Tune's OptunaSearch.

    A class, not a closure: Ray pickles the searcher (with this function) into every experiment
    checkpoint, and `--resume` unpickles it to bring TPE's history back.

    The layer range samples two ends in the same [low, high] and sorts them, so every sample is a
    valid a ≤ b and the distributions stay fixed across trials (TPE models them independently).
    """

    def __init__(self, space: SearchSpace):
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
        for name in ("clip", "batch", "lr", "epochs"):
            p = getattr(ps, name)
            v = _suggest(trial, name, p)
            if isinstance(p, Fixed):
                fixed[name] = v
        return fixed


def define_by_run(space: SearchSpace) -> DefineByRun:
    return DefineByRun(space)
