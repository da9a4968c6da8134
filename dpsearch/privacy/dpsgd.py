"""The DP-SGD mechanism exactly as it runs: the step plan, Opacus wrapping over a Poisson loader whose
length is the plan's, and the one training epoch. The fine-tune and the privacy audit both sit on this.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
from opacus import PrivacyEngine
from opacus.data_loader import wrap_collate_with_empty
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from dpsearch.config import ConfigError, FinetuneConfig, default_delta
from dpsearch.privacy.accounting import calibrate_sigma, check_accountants, poisson_plan, warmup_sigma
from dpsearch.privacy.bookkeeping import BookkeepingDPOptimizer, Tape, UnsupportedLayer
from dpsearch.privacy.randomness import MechanismRandomness


class PrivacyPlan(NamedTuple):
    """What the accountant is told, fixed before any private record is read."""

    delta: float
    q: float
    steps: int
    sigma: float
    steps_per_epoch: int
    eps_pld_check: float  # dp-accounting's PLD on the same (σ, q, steps): enforced to agree
    warmup_sigma: float | None = None  # the class-mean warm-up's σ_w, composed before the steps (cfg.warmup)


def plan_privacy(cfg: FinetuneConfig, n: int) -> PrivacyPlan:
    """The plan for this config on N private images; raises ConfigError on impossible input. With a declared
    public N (cfg.n_public) the plan reads only that, never the exact number of records (docs/privacy.md). A config
    given as a sampling rate (no batch) is resolved to its batch on that N first (FinetuneConfig.for_data)."""
    cfg = cfg.for_data(n)
    cfg.check_against_data(n)
    n = cfg.n_public or n
    delta = cfg.delta if cfg.delta is not None else default_delta(n)
    q, steps = poisson_plan(n, cfg.batch, cfg.epochs)
    prefix = warmup_sigma(cfg.eps, delta, cfg.warmup) if cfg.warmup else None
    sigma = calibrate_sigma(cfg.eps, delta, q, steps, cfg.accountant, prefix)
    pld = check_accountants(sigma, q, steps, delta, cfg.accountant, prefix)
    return PrivacyPlan(delta, q, steps, sigma, steps // cfg.epochs, pld, prefix)


class PoissonSampler(UniformWithReplacementSampler):
    """Opacus' Poisson sampler with two changes: the number of batches per epoch is the plan's (Opacus
    derives int(1/q), which float rounding can make one short, e.g. N = 60000, B = 646), and the masks
    come from the run's MechanismRandomness instead of torch's global RNG."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int, rng: MechanismRandomness):
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, steps=steps)
        self.rng = rng

    def __iter__(self):
        for _ in range(self.steps):
            yield self.rng.poisson_mask(self.num_samples, self.sample_rate).nonzero().reshape(-1).tolist()


def poisson_loader(dataset: Dataset, q: float, steps_per_epoch: int, rng: MechanismRandomness) -> DataLoader:
    """One epoch = steps_per_epoch Poisson batches (rate q), empty batches included."""
    first = dataset[0]
    collate = wrap_collate_with_empty(collate_fn=default_collate, sample_empty_shapes=[(0, *x.shape) for x in first],
                                      dtypes=[x.dtype for x in first])
    sampler = PoissonSampler(len(dataset), q, steps_per_epoch, rng)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)


def check_loader(dp_loader: DataLoader, q: float, steps_per_epoch: int) -> None:
    """Before training: the loader runs the plan's sampling rate and number of steps, and Opacus' own
    accountant (which reads 1/len(loader)) sees the same q."""
    sampler = dp_loader.batch_sampler
    if len(dp_loader) != steps_per_epoch or sampler.sample_rate != q or abs(1.0 / len(dp_loader) - q) > 1e-15:
        raise RuntimeError(f"the DP loader runs {len(dp_loader)} steps per epoch at q = {sampler.sample_rate}, the "
                           f"privacy plan says {steps_per_epoch} at q = {q}; refusing to train")


def _use_secure_noise(optimizer, rng: MechanismRandomness) -> None:
    """Opacus' DPOptimizer.add_noise with the noise drawn by rng (the OS CSPRNG) instead of a torch
    generator, for --secure-rng. The arithmetic is Opacus' own: p.grad = summed clipped grad + N(0, (σC)²)."""

    def add_noise():
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            noise = rng.gaussian_like(p.summed_grad, optimizer.noise_multiplier * optimizer.max_grad_norm)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise


def clipping_path(module: nn.Module, clipping: str = "auto") -> str:
    """Which per-sample clipping runs: "bookkeeping" (privacy/bookkeeping.py) when every trainable layer has
    a rule there, else Opacus' "hooks"; "auto" picks book-keeping wherever it applies (docs/performance.md)."""
    if clipping == "hooks":
        return "hooks"
    try:
        Tape(module).remove()
        return "bookkeeping"
    except UnsupportedLayer:
        if clipping == "bookkeeping":
            raise
        return "hooks"


def check_precision(path: str, precision: str) -> None:
    """A precision other than fp32 runs on book-keeping only (path: clipping_path's answer)."""
    if precision != "fp32" and path != "bookkeeping":
        # Opacus' hooks would form per-sample gradients and their norms in bfloat16: ‖g_i‖ ≤ C no longer exact.
        raise ConfigError(f"precision {precision!r} needs book-keeping clipping (float32 norms and clipped sum); "
                          f"this run clips with Opacus' hooks: use precision 'fp32'")


def privatize(module: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, sigma: float, clip: float,
              accountant: str = "prv", rng: MechanismRandomness | None = None, steps_per_epoch: int | None = None,
              clipping: str = "auto", n_public: int | None = None, draws: int = 1, precision: str = "fp32"):
    """Opacus wrapping with Poisson sampling: (engine, module, optimizer, loader).

    The one place DP-SGD is configured; the trainable set must already be frozen/unfrozen. `loader` gives
    the dataset and the expected batch size (q = 1/⌈N/B⌉); rng defaults to fresh OS entropy. `clipping`
    chooses how per-sample gradients are clipped (clipping_path); the sampler, noise and accountant are the
    same on both paths. n_public: the public N q is planned from (default: the dataset's length); each record
    is still sampled with probability q, whatever the exact count. draws: rows per example inside `module`
    (DiffusionLoss's noise multiplicity); on the hooks path dp_sgd_epoch folds them (average_draws). precision
    "bf16": the module's forward runs under bfloat16 autocast, the clipping math in float32 (Tape); book-keeping only.
    """
    rng = rng or MechanismRandomness()
    path = clipping_path(module, clipping)
    check_precision(path, precision)
    n = n_public or len(loader.dataset)
    q, per_epoch = poisson_plan(n, loader.batch_size, 1)
    if steps_per_epoch is not None and steps_per_epoch != per_epoch:
        raise RuntimeError(f"planned {steps_per_epoch} steps per epoch, the loader gives {per_epoch}")
    dp_loader = poisson_loader(loader.dataset, q, per_epoch, rng)
    check_loader(dp_loader, q, per_epoch)
    device = next((p.device for p in module.parameters() if p.requires_grad), torch.device("cpu"))
    with warnings.catch_warnings():
        # Opacus warns that its secure_mode (torchcsprng) is off: dpsearch draws the mechanism's
        # randomness itself (privacy/randomness.py), with --secure-rng for a CSPRNG.
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant=accountant)
        tape = Tape(module, draws=draws, precision=precision) if path == "bookkeeping" else None
        try:
            dp_module, dp_optimizer, dp_loader = engine.make_private(
                module=module, optimizer=optimizer, data_loader=dp_loader, noise_multiplier=sigma,
                max_grad_norm=clip, poisson_sampling=False, loss_reduction="mean",
                grad_sample_mode="no_op" if tape else "hooks", noise_generator=rng.noise_generator(device))
            if tape:
                BookkeepingDPOptimizer.adopt(dp_optimizer, tape)
        except BaseException:
            if tape:
                tape.remove()
            raise
    if tape:
        dp_module.remove_hooks = tape.remove  # so dp_module._close() gives the layers their own forward back
    # Opacus sets expected_batch_size = int(len(dataset) · q) and divides the noisy sum by it: from the exact
    # count of a slice or share, a data-dependent divisor. Planned from the public N instead.
    dp_optimizer.expected_batch_size = max(1, int(n * q))
    dp_module.forbid_grad_accumulation()  # what poisson_sampling=True would set: one backward per physical batch
    if rng.secure:
        _use_secure_noise(dp_optimizer, rng)
    check_loader(dp_loader, q, per_epoch)
    return engine, dp_module, dp_optimizer, dp_loader


warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to "
                        "module outputs since no inputs require gradients")  # frozen inputs: expected with Opacus hooks


def average_draws(params: list[nn.Parameter], draws: int, examples: int | None = None) -> None:
    """Opacus' hooks give one per-sample gradient per row the layers saw; with DiffusionLoss's k draws per
    example (adjacent rows, the loss their mean) the example's gradient is the mean of its k rows: Opacus
    scales each row by the B·k rows of the pass, so row j holds ∇ℓ_j and the example's is (1/k) Σ_j ∇ℓ_j.
    examples: the pass's B; every grad_sample must then hold exactly B·k rows (anything else would mix images)."""
    for p in params:
        gs = p.grad_sample
        if examples is not None and gs.shape[0] != examples * draws:
            raise RuntimeError(f"a per-sample gradient holds {gs.shape[0]} rows for {examples} examples × {draws} draws; "
                               f"refusing to group rows that may belong to different images")
        p.grad_sample = gs.view(-1, draws, *gs.shape[1:]).mean(1)


def dp_sgd_epoch(dp_module: nn.Module, optimizer, dp_loader: DataLoader, trainable: list[nn.Parameter],
                 device, physical_batch: int, on_step: Callable[[], object] | None = None, draws: int = 1) -> int:
    """One pass over the Poisson loader; returns the number of logical (DP) steps taken.

    dp_module(x, y) must return one loss per example, shape [B]; with draws = k it runs k rows per example,
    so a physical batch holds physical_batch // k examples. Nothing computed from the private batch (not
    even its loss) leaves this function: only the noisy update reaches the weights.
    """
    done = 0
    hooks = draws > 1 and not isinstance(optimizer, BookkeepingDPOptimizer)
    with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=max(1, physical_batch // draws),
                            optimizer=optimizer) as mem_loader:
        for x, y in mem_loader:
            x, y = x.to(device), y.to(device)
            if len(x):
                dp_module(x, y).mean().backward()
                if hooks:
                    average_draws(trainable, draws, len(x))
            else:
                # An empty Poisson batch still takes a noise-only step: skipping it would leak
                # whether a record was sampled. A zero per-sample gradient clips to zero, so
                # Opacus' step below adds exactly the σC noise the accountant assumes.
                for p in trainable:
                    p.grad_sample = torch.zeros((1, *p.shape), device=p.device, dtype=p.dtype)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if not optimizer._is_last_step_skipped:
                done += 1
                if on_step is not None:
                    on_step()
    return done


__all__ = ["PrivacyPlan", "plan_privacy", "privatize", "clipping_path", "check_precision", "dp_sgd_epoch", "poisson_loader",
           "check_loader", "PoissonSampler", "average_draws", "ConfigError"]
