"""The typed values a search space's params may take: log-uniform, choice or fixed numbers, integer ranges,
layer ranges and the fine-tuning method. Each YAML form is checked here, with a message naming the field."""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from dpsearch.config import _Strict, parse_layers


MAX_INT_VALUES = 64  # an integer range is a grid the privacy report enumerates (one σ per batch × epochs)


def _number(name: str, v) -> float:
    """YAML 1.1 reads 1e3 and 1e-3 (no dot) as strings: accept numeric strings, refuse the rest."""
    if isinstance(v, bool):
        raise ValueError(f"{name}: {v!r} is not a number")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"{name}: {v!r} is not a number") from None
    if not isinstance(v, (int, float)):
        raise ValueError(f"{name}: {v!r} is not a number")
    return float(v)


def _integer(name: str, v) -> int:
    x = _number(name, v)
    if not (math.isfinite(x) and x == int(x) and x >= 1):
        raise ValueError(f"{name}: {v!r} is not a whole number ≥ 1")
    return int(x)


class LogUniform(_Strict):
    log_uniform: tuple[float, float]

    @model_validator(mode="after")
    def _order(self):
        lo, hi = self.log_uniform
        if not (0 < lo <= hi):
            raise ValueError(f"log_uniform bounds must satisfy 0 < low ≤ high, got {lo}, {hi}")
        return self


class FloatChoice(_Strict):
    choice: list[float] = Field(min_length=1)


class FloatFixed(_Strict):
    value: float


class IntChoice(_Strict):
    choice: list[int] = Field(min_length=1)

    def values(self) -> list[int]:
        return sorted(set(self.choice))


class IntRange(_Strict):
    """Every integer low, low + step, ..., ≤ high; searched with Optuna's suggest_int."""

    low: int = Field(ge=1)
    high: int = Field(ge=1)
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        if len(self.values()) > MAX_INT_VALUES:
            raise ValueError(f"low {self.low}, high {self.high}, step {self.step} gives {len(self.values())} values; the "
                             f"privacy report calibrates σ for each, so at most {MAX_INT_VALUES}: raise step or use choice")
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class IntFixed(_Strict):
    value: int = Field(ge=1)

    def values(self) -> list[int]:
        return [self.value]


FloatParam = Union[LogUniform, FloatChoice, FloatFixed]
IntParam = Union[IntChoice, IntRange, IntFixed]


def _float_param(name: str, raw) -> FloatParam:
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("log_uniform", "choice", "value"):
        raise ValueError(f"{name} must be one of {{log_uniform: [low, high]}}, {{choice: [...]}}, {{value: x}}; got {raw!r}")
    (kind, v), = raw.items()
    if kind == "log_uniform":
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError(f"{name}: log_uniform takes [low, high], got {v!r}")
        return LogUniform(log_uniform=tuple(_number(name, x) for x in v))
    if kind == "choice":
        if not isinstance(v, list) or not v:
            raise ValueError(f"{name}: choice takes a non-empty list, got {v!r}")
        return FloatChoice(choice=[_number(name, x) for x in v])
    return FloatFixed(value=_number(name, v))


def _int_param(name: str, raw) -> IntParam:
    if isinstance(raw, dict) and "log_uniform" in raw:
        raise ValueError(f"{name} is a whole number: log_uniform would draw fractions; use {{choice: [...]}} or an "
                         f"integer range {{low: a, high: b, step: s}}")
    if isinstance(raw, dict) and set(raw) <= {"low", "high", "step"} and {"low", "high"} <= set(raw):
        return IntRange(**{k: _integer(f"{name}.{k}", v) for k, v in raw.items()})
    if isinstance(raw, dict) and set(raw) == {"choice"}:
        v = raw["choice"]
        if not isinstance(v, list) or not v:
            raise ValueError(f"{name}: choice takes a non-empty list, got {v!r}")
        return IntChoice(choice=[_integer(name, x) for x in v])
    if isinstance(raw, dict) and set(raw) == {"value"}:
        return IntFixed(value=_integer(name, raw["value"]))
    raise ValueError(f"{name} must be {{choice: [...]}}, {{low: a, high: b, step: s}} or {{value: n}}; got {raw!r}")


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


METHODS = ("attention", "lora")


class MethodSpace(_Strict):
    """What trains inside the chosen modules: {choice: [attention, lora]} (searched) or {value: lora}."""

    choice: Optional[list[Literal["attention", "lora"]]] = Field(None, min_length=1)
    value: Optional[Literal["attention", "lora"]] = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.choice is None) == (self.value is None):
            raise ValueError("method takes either {choice: [attention, lora]} or {value: attention|lora}")
        return self

    def values(self) -> list[str]:
        return sorted(set(self.choice)) if self.choice else [self.value]

