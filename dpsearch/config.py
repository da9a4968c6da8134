"""Typed configs for every pipeline step, validated at the edge (CLI or YAML) before any work starts."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config value is invalid; the message says which and what to do."""


EPS_MAX = 100.0  # above this, DP-SGD's noise is negligible and PRV's discretisation grows without bound


def check_eps_range(eps: float) -> None:
    """ε must be in (0, EPS_MAX]: σ calibration is bounded in time and memory there (privacy/accounting.py)."""
    if math.isnan(eps) or eps <= 0:
        raise ConfigError(f"ε must be a positive number, got {eps}")
    if eps > EPS_MAX:
        raise ConfigError(
            f"ε = {eps:g} is above {EPS_MAX:g}: there DP-SGD adds next to no noise, the guarantee means little and "
            f"the PRV accountant's memory and time grow without bound. For a non-private reference run use "
            f"`dpsearch run --non-private` (no clipping, no noise, labelled NOT DP)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """The small class-conditional LDM used on the embedded defaults (28×28 grey, 10 classes)."""

    image_size: int = Field(28, gt=0)
    channels: int = Field(1, gt=0)
    num_classes: int = Field(10, gt=1)
    padded_size: int = Field(32, gt=0)  # the autoencoder wants a multiple of its downsampling
    ae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    attention_heads: int = 2

    @model_validator(mode="after")
    def _sizes(self):
        down = 2 ** (len(self.ae_channels) - 1)
        if self.padded_size < self.image_size or self.padded_size % down:
            raise ValueError(f"padded_size {self.padded_size} must be ≥ image_size and a multiple of {down}")
        return self


# Sources pretraining may read. Only data known to be public: printed digits rendered from fonts that ship
# with matplotlib (optionally elastically distorted), or a folder the user declares public by naming it `public-folder:PATH`. mnist, folder:
# and torchvision: are private sources here; pretraining on them would void "public data only".
PUBLIC_SOURCES = ("printed-digits", "printed-digits-elastic")
PUBLIC_FOLDER = "public-folder:"


class PretrainConfig(_Strict):
    # One of PUBLIC_SOURCES or public-folder:PATH. The elastic variant is the default: handwriting-like strokes,
    # +0.5 points public-only (one seed, within noise; docs/utility.md), a library default chosen once.
    public: str = "printed-digits-elastic"
    n_public: int = Field(20000, gt=0)
    ae_epochs: int = Field(2, gt=0)
    ae_batch: int = Field(128, gt=0)
    ae_lr: float = Field(1e-3, gt=0)
    ldm_epochs: int = Field(15, gt=0)
    ldm_batch: int = Field(256, gt=0)
    ldm_lr: float = Field(1e-3, gt=0)
    label_dropout: float = Field(0.1, ge=0, lt=1)  # for classifier-free guidance
    seed: int = 0
    model: ModelConfig = ModelConfig()

    @field_validator("public")
    @classmethod
    def _public_only(cls, v: str) -> str:
        if v not in PUBLIC_SOURCES and not (v.startswith(PUBLIC_FOLDER) and len(v) > len(PUBLIC_FOLDER)):
            raise ValueError(f"{v!r} is not a public source: pretraining reads only public data "
                             f"({', '.join(PUBLIC_SOURCES)}, or {PUBLIC_FOLDER}PATH for a folder you declare public). "
                             f"Private data is used only by the DP fine-tune")
        return v


_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_layers(spec: str | tuple[int, int] | None, n_layers: int) -> tuple[int, int]:
    """`a-b` (inclusive, 1-based) or `all` → (a, b), checked against the model's L."""
    if spec is None or spec == "all":
        return (1, n_layers)
    if isinstance(spec, tuple):
        a, b = spec
    else:
        m = _RANGE.match(spec)
        if not m:
            raise ConfigError(f"layer range {spec!r} is not of the form a-b (e.g. 3-7) or 'all'")
        a, b = int(m.group(1)), int(m.group(2))
    if not (1 <= a <= b <= n_layers):
        raise ConfigError(f"layer range {a}-{b} is outside this model's attention modules 1-{n_layers} "
                          f"(need 1 ≤ a ≤ b ≤ {n_layers}); run `dpsearch layers MODEL` to see them")
    return a, b


# The default sampling rate: B = ⌈q·N⌉-ish records per expected logical batch (batch_from_rate). q = 1/15 is B = 4000 on MNIST's
# 60,000, the default chosen there: 5 epochs keep a trial near 12 minutes on this 2-core CPU (≈ 150 s per epoch
# over 55-60k MNIST with Opacus hooks, bench/dp_step.py); B = 4000 rather than 1000 at the same epochs: 3.2× less
# noise per step at ε = 10 for σ 0.57 → 0.72 (bench/gradient_snr.py), lr scaled with B; +3.3 points of oracle
# accuracy at released ε = 10 (docs/utility.md, one seed): a library default chosen once on the oracle metric.
# As a rate it fits any N (a folder of 200 images: B = 14) where a fixed B = 4000 refused every set below 4000.
DEFAULT_Q = 1 / 15


def batch_from_rate(q: float, n: int) -> int:
    """The expected batch B that makes the Poisson loader run rate 1/m, m = round(1/q) steps per epoch:
    B = ⌈N/m⌉, at least 1. The loader's rate is 1/⌈N/B⌉ (privacy/accounting.poisson_plan), which is 1/m for
    every N ≥ m(m−1); B = round(q·N) ran 1/(m+1) on about half of all N (N = 59,000 at q = 1/15: 1/16).
    So q and the steps per epoch follow from q alone, not from the exact N."""
    return max(1, math.ceil(n / max(1, round(1 / q))))


class FinetuneConfig(_Strict):
    eps: Optional[float] = None  # required unless non_private
    non_private: bool = False  # a reference run without clipping or noise: NOT DP, labelled so everywhere
    delta: Optional[float] = None  # default: 1/(N ln N), two significant digits (default_delta)
    # The public N the privacy plan uses (q = 1/⌈N/B⌉, steps, default δ): the declared size of the data this run
    # reads, fixed before any record is read. None: the number of records, the usual DP-SGD convention. A run on a
    # hash-rule share of the data (a slice, --n-private) plans from the share's public size, never its exact count.
    n_public: Optional[int] = Field(None, gt=0)
    layers: str = "all"
    # "attention": the attention modules `layers` (the product's search dimension); "unet": every UNet weight,
    # the ceiling ladder's whole-model rung (docs/utility.md).
    scope: Literal["attention", "unet"] = "attention"
    # "attention": every weight of modules a..b; "lora": rank-`rank` adapters on their attention projections
    # (q, k, v, out of self- and cross-attention), the base weights frozen (models/lora.py)
    method: Literal["attention", "lora"] = "attention"
    rank: int = Field(8, gt=0)  # LoRA rank r (method lora); α = r, so the adapter's scale is 1
    clip: float = 0.01
    # The expected logical batch B, or instead the sampling rate q (B = ⌈N/round(1/q)⌉, batch_from_rate); neither given:
    # q = DEFAULT_Q. batch_for / for_data resolve it against the public N the plan uses, before any accounting;
    # from there on every step (plan, loader, privacy record) sees an int batch.
    batch: Optional[int] = None
    q: Optional[float] = None
    epochs: int = 5
    lr: float = 2e-3
    # "cosine": the step size decays from lr to 0 over the planned steps (half a cosine); lr is public, so the
    # schedule is post-processing of the noisy gradients and costs no privacy. "constant": lr throughout.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    physical_batch: int = Field(128, gt=0)  # rows per forward pass: physical_batch // multiplicity images
    label_dropout: float = Field(0.1, ge=0, lt=1)
    # DPDM's noise multiplicity k: each image's loss averages k (timestep, noise) draws, so the one per-sample
    # gradient that is clipped is already their mean (less variance per image, the same privacy, k× the compute).
    multiplicity: int = Field(1, ge=1, le=64)
    # EMA of the trainable weights (post-processing of the noisy iterates): the decay's cap, with diffusers'
    # warm-up (1 + t)/(10 + t) below it; the model is sampled from the average. None: the last iterate.
    ema: Optional[float] = Field(None, gt=0, lt=1)
    # DP class-mean warm-up (DP-FETA's "central images"): before DP-SGD, one Gaussian release of the per-class
    # pixel means takes this share of the budget (Gaussian-DP terms, accounting.warmup_sigma) and the trainable
    # weights are fitted to augmented copies of those noisy means for warmup_steps (post-processing). None: off.
    warmup: Optional[float] = Field(None, gt=0, le=0.5)
    warmup_steps: int = Field(300, ge=1)
    n_private: Optional[int] = None  # use a random subset of the private set (tests, quick looks)
    accountant: Literal["prv", "rdp"] = "prv"
    secure_rng: bool = False  # draw sampling and noise from the OS CSPRNG (privacy/randomness.py)
    # How per-sample gradients are clipped: book-keeping (one backward pass, privacy/bookkeeping.py) or Opacus'
    # hooks; "auto" takes book-keeping wherever every trainable layer has a rule (docs/performance.md).
    clipping: Literal["auto", "bookkeeping", "hooks"] = "auto"
    # "bf16": forward and backward under torch.autocast in bfloat16; the per-sample norms, clip factors, clipped sum
    # and noise stay float32, so every clipped per-sample gradient keeps norm ≤ C. Book-keeping clipping only.
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0  # only the --n-private subset choice; a fine-tune seeds nothing (fresh OS entropy per run)

    @field_validator("eps")
    @classmethod
    def _eps(cls, v):
        if v is None:
            return v
        try:
            check_eps_range(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("delta")
    @classmethod
    def _delta(cls, v):
        if v is not None and not (0 < v < 1):
            raise ValueError(f"δ must be in (0, 1), got {v}")
        return v

    @field_validator("clip", "lr")
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @field_validator("batch", "epochs")
    @classmethod
    def _positive_int(cls, v: Optional[int], info) -> Optional[int]:
        if v is not None and v <= 0:
            raise ValueError(f"{info.field_name} must be ≥ 1, got {v}")
        return v

    @field_validator("q")
    @classmethod
    def _rate(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not (0 < v <= 1):  # NaN fails too
            raise ValueError(f"the sampling rate q must be in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _batch_or_rate(self):
        if self.batch is not None and self.q is not None:
            raise ValueError(f"give the batch B ({self.batch}) or the sampling rate q ({self.q:g}), not both")
        if self.warmup is not None and self.non_private:
            raise ValueError("the class-mean warm-up is a DP release and needs ε; drop --warmup from a non-private run")
        return self

    def batch_for(self, n: int) -> int:
        """The expected logical batch B on N records (the public N of the plan when one is declared): the
        configured batch, else batch_from_rate(q, N) with q = the configured rate or DEFAULT_Q."""
        if self.batch is not None:
            return self.batch
        return batch_from_rate(DEFAULT_Q if self.q is None else self.q, self.n_public or n)

    def for_data(self, n: int) -> "FinetuneConfig":
        """This config with its batch resolved on N records (batch_for): an int batch and no q, as every later
        step (privacy plan, Poisson loader, privacy record) reads it. Unchanged when the batch is already set."""
        if self.batch is not None:
            return self
        return self.model_copy(update={"batch": self.batch_for(n), "q": None})

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: str) -> str:
        if v != "all" and not _RANGE.match(v):
            raise ValueError(f"layer range {v!r} is not of the form a-b (e.g. 3-7) or 'all'")
        return v.replace(" ", "")

    @model_validator(mode="after")
    def _scope(self):
        if self.scope == "unet" and self.layers != "all":
            raise ValueError(f"scope 'unet' trains every UNet weight: drop the layer range {self.layers!r}")
        if self.scope == "unet" and self.method == "lora":
            raise ValueError("method 'lora' adapts attention projections: use scope 'attention' with it")
        if self.precision != "fp32" and self.clipping == "hooks" and not self.non_private:
            raise ValueError("precision 'bf16' keeps the clipping math float32 on book-keeping only: drop --clipping hooks")
        return self

    @model_validator(mode="after")
    def _eps_or_non_private(self):
        if self.non_private and self.eps is not None:
            raise ValueError("a non-private reference run has no ε: drop --eps or --non-private")
        if not self.non_private and self.eps is None:
            raise ValueError("ε is required for a DP fine-tune (or ask for a non-private reference run)")
        return self

    def check_against_data(self, n: int) -> None:
        """The checks that need N (the public N of the plan when one is declared): batch ≤ N and δ < 1/N."""
        batch = self.batch_for(n)
        n = self.n_public or n
        if batch > n:
            raise ConfigError(f"batch size {batch} is larger than the private set ({n} images); use --batch ≤ {n}, "
                              f"or --q (a sampling rate) alone")
        if self.delta is not None and self.delta >= 1.0 / n:
            raise ConfigError(f"δ = {self.delta:g} is not below 1/N = {1.0 / n:.3g} (N = {n}); such a δ allows "
                              f"releasing a whole record. Use δ < 1/N, e.g. {default_delta(n):g}")


def method_label(method: str | None, rank=None) -> str:
    """How tables, reports and plots name what trained: "attention" or "lora r8"."""
    method = method or "attention"
    return f"lora r{int(rank)}" if method == "lora" and rank is not None else method


def default_delta(n: int) -> float:
    """1/(N ln N) rounded down to two significant digits: δ ≪ 1/N by the factor ln N, as reviewers of DP
    releases expect (N·δ ≈ 0.09 for MNIST, not ≈ 0.6) and as DPImageBench uses (docs/privacy.md)."""
    if n < 3:
        raise ConfigError(f"a private set of {n} records is too small for a DP guarantee with a meaningful δ")
    d = 1.0 / (n * math.log(n))
    k = math.floor(math.log10(d)) - 1  # two significant digits, rounded down so the default never exceeds 1/(N ln N)
    return math.floor(d / 10.0 ** k) * 10.0 ** k


class SampleConfig(_Strict):
    per_class: int = Field(500, gt=0)
    # DPM-Solver++ at 10 steps: 2.7× the images/s of DDIM at 25 steps, oracle accuracy within 0.5 points
    # over 3 seeds each (bench/sampling.py, docs/performance.md); FID on public-CNN features is higher.
    steps: int = Field(10, gt=0)  # denoising steps of whichever scheduler (DDIM or DPM-Solver++)
    scheduler: Literal["ddim", "dpm++"] = "dpm++"  # diffusers' DDIMScheduler or DPMSolverMultistepScheduler
    # Classifier-free guidance w in diffusers' convention: 1.0 is the pure conditional model, which DPImageBench
    # and DPDM call guidance 0 (their ε̂ = (1 + w')ε_c − w'ε_u, w' = w − 1) and sample accuracy sets at. Chosen once
    # on the oracle (docs/utility.md): 1.0 beat 3.0 on every DP model probed, +3.6 (ε = 10) and +4.9 (ε = 1) points;
    # at 3.0 the digits are cleaner to a person (lower FID) but closer to prototypes. A sweep chooses it on its DP signal.
    guidance: float = Field(1.0, ge=0)
    # Images per denoising batch (the UNet sees twice as many under guidance). 100 against 500 on 2 CPU cores with
    # the default model: 1.2-1.3× the images/s under guidance, the same without (bench/sample_batch.py,
    # docs/performance.md "Sampling"): a smaller batch's activations stay in the CPU's caches. A GPU may want more:
    # `sample.batch` in a space.
    batch: int = Field(100, gt=0)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, v):
        """Spaces and sweeps written before the rename say ddim_steps, although DPM-Solver++ uses it too."""
        if isinstance(v, dict) and "ddim_steps" in v and "steps" not in v:
            v = {**v, "steps": v["ddim_steps"]}
            del v["ddim_steps"]
        return v


class EvaluateConfig(_Strict):
    classifier_epochs: int = Field(10, gt=0)
    classifier_batch: int = Field(128, gt=0)
    classifier_lr: float = Field(1e-3, gt=0)
    holdout: float = Field(0.1, gt=0, lt=1)  # part of the synthetic set kept for early stopping
    fid_extractor: Literal["auto", "inception", "public-cnn"] = "auto"
    seed: int = 0
    # Oracle metrics on the first oracle_n records of the real test split (None: all of it, the protocol's figure).
    # A smaller oracle is faster and noisier; the smoke space uses it, reported figures use the whole split. The first
    # n, not a stratified sample: MNIST's test split is not ordered by class (another split sorted by label would skew it).
    oracle_n: Optional[int] = Field(None, gt=0)


def validate(model_cls: type[BaseModel], **values):
    """Build a config, turning pydantic's errors into one readable ConfigError."""
    try:
        return model_cls(**values)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or model_cls.__name__
            msgs.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid " + model_cls.__name__ + ": " + "; ".join(msgs)) from None


def load_yaml(path: Path, model_cls: type[BaseModel]):
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    return validate(model_cls, **data)
