"""One DP fine-tune: freeze, select attention layers a-b, DP-SGD with Poisson sampling (Opacus)."""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from dpsearch.config import ConfigError, FinetuneConfig, parse_layers
from dpsearch.data import ImageSet
from dpsearch.finetune_state import FinetuneState, resumed_plan
from dpsearch.device import autocast
from dpsearch.models import LDM, attention_modules, diffusion_loss, select_attention_layers
from dpsearch.models.lora import add_lora, has_lora, lora_adapter, merge_lora
from dpsearch.privacy import PrivacyRecord, epsilon_for
from dpsearch.privacy.accounting import accountant_epsilon, history as accountant_history
from dpsearch.privacy.bookkeeping import BookkeepingDPOptimizer
from dpsearch.privacy.class_means import noisy_class_means
from dpsearch.privacy.dpsgd import check_precision, clipping_path, dp_sgd_epoch, plan_privacy, privatize
from dpsearch.privacy.randomness import MechanismRandomness
from dpsearch.warmup import warm_up

log = logging.getLogger(__name__)


class DiffusionLoss(nn.Module):
    """UNet + class embedder as one module whose forward returns one loss per image, shape [B].

    Each image's loss is its own term, so exactly one gradient per private image is clipped. With
    `draws` = k > 1 (DPDM's noise multiplicity) that term is the mean over k (timestep, noise) draws: the
    images are repeated k times, adjacent, and the k losses averaged; the clipping paths group those rows
    back into one example (Tape(draws=k), dpsgd.average_draws). noise and t, when given, hold B·k rows.
    """

    def __init__(self, model: LDM, label_dropout: float, draws: int = 1):
        super().__init__()
        self.unet, self.embedder = model.unet, model.embedder
        self.scheduler = model.scheduler
        self.label_dropout = label_dropout
        self.draws = draws

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, noise=None, t=None) -> torch.Tensor:
        k = self.draws
        if k > 1:
            latents, labels = latents.repeat_interleave(k, 0), labels.repeat_interleave(k, 0)
        loss = diffusion_loss(self.unet, self.embedder, self.scheduler, latents, labels, self.label_dropout, noise, t)
        return loss.view(-1, k).mean(1) if k > 1 else loss


@dataclass
class FinetuneResult:
    model: LDM
    privacy: PrivacyRecord | None  # None only for a non-private reference run
    history: list[dict] = field(default_factory=list)  # per epoch: ε spent and steps (public: from the plan)
    adapter: tuple[dict, dict] | None = None  # method lora: the DP adapter (weights, config), already merged into model
    warmup_means: torch.Tensor | None = None  # cfg.warmup: the DP class means released for it ([K, C, H, W] in [0, 1])


def _ema(trainable: list[nn.Parameter], cfg: FinetuneConfig):
    """diffusers' EMA of the trainable weights (decay capped at cfg.ema, warm-up (1 + t)/(10 + t)), or None."""
    if cfg.ema is None:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(trainable, decay=cfg.ema, foreach=True)


def lr_at(cfg: FinetuneConfig, step: int, steps: int) -> float:
    """The step size of step `step` (0-based) of `steps`. Written as a function of the step count, not as a
    torch LR scheduler, so a resumed run gets it back from FinetuneState.steps with no scheduler state."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _trainable_named(model: LDM) -> dict[str, nn.Parameter]:
    return {f"{prefix}.{n}": p for prefix, m in (("unet", model.unet), ("embedder", model.embedder))
            for n, p in m.named_parameters() if p.requires_grad}


NOT_DP = {"dp": False, "statement": "non-private reference run: no per-sample clipping, no noise. NOT differentially "
                                     "private; never release this model or its samples as DP"}


def select_trainable(model: LDM, cfg: FinetuneConfig, a: int, b: int) -> list[nn.Parameter]:
    """Attention modules a..b and the embedder, LoRA adapters on their projections and the embedder (method
    lora), or (scope "unet") every UNet weight and the embedder."""
    if cfg.method == "lora":
        if has_lora(model.unet):
            raise ValueError("this UNet already carries LoRA adapters; load a fresh copy of the model")
        for m in (model.unet, model.embedder, model.vae):
            m.requires_grad_(False)
        adapters = add_lora(model.unet, a, b, cfg.rank)
        model.embedder.requires_grad_(True)
        return adapters + [p for p in model.embedder.parameters() if p.requires_grad]
    params = select_attention_layers(model.unet, model.embedder, (a, b), frozen=(model.vae,))
    if cfg.scope == "unet":
        model.unet.requires_grad_(True)
        params = [p for m in (model.unet, model.embedder) for p in m.parameters() if p.requires_grad]
    return params


def _what(cfg: FinetuneConfig, a: int, b: int) -> str:
    if cfg.scope == "unet":
        return "whole UNet"
    return f"LoRA r={cfg.rank} on layers {a}-{b}" if cfg.method == "lora" else f"layers {a}-{b}"


def _finish(model: LDM, cfg: FinetuneConfig) -> tuple[dict, dict] | None:
    """Freezes the trained model; with LoRA, keeps a copy of the adapter and merges it into the UNet."""
    adapter = None
    if cfg.method == "lora":
        adapter = lora_adapter(model.unet)
        merge_lora(model.unet)
    model.unet.eval().requires_grad_(False)
    model.embedder.eval().requires_grad_(False)
    return adapter


def finetune_non_private(model: LDM, private: ImageSet, cfg: FinetuneConfig, progress: bool = True) -> FinetuneResult:
    """The same layers, loss, optimizer, batch size and epochs as dp_finetune without clipping or noise:
    the reference that says what DP costs. Its privacy record is NOT_DP."""
    if not cfg.non_private:
        raise ValueError("finetune_non_private needs a config with non_private=True")
    cfg = cfg.for_data(len(private))  # the same batch B the DP run would use
    a, b = parse_layers(cfg.layers, len(attention_modules(model.unet)))
    model.vae.requires_grad_(False)
    latents = model.encode(private.as_float()).cpu()
    trainable = select_trainable(model, cfg, a, b)
    module = DiffusionLoss(model, cfg.label_dropout, cfg.multiplicity).train()
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    ema = _ema(trainable, cfg)
    loader = DataLoader(TensorDataset(latents, private.labels), batch_size=cfg.batch, shuffle=True)
    per_pass = max(1, cfg.physical_batch // cfg.multiplicity)
    history = []
    total, step = cfg.epochs * len(loader), 0
    bar = tqdm(total=cfg.epochs * len(loader), desc=f"NON-PRIVATE fine-tune {_what(cfg, a, b)}", disable=not progress,
               leave=False)
    for epoch in range(1, cfg.epochs + 1):
        for x, y in loader:
            _set_lr(optimizer, lr_at(cfg, step, total))
            step += 1
            optimizer.zero_grad(set_to_none=True)
            for i in range(0, len(x), per_pass):  # the mean loss over the batch, in memory-sized parts
                xs, ys = x[i:i + per_pass].to(model.device), y[i:i + per_pass].to(model.device)
                with autocast(cfg.precision, model.device):  # the DP run's precision (Tape), for a like comparison
                    loss = module(xs, ys).sum() / len(x)
                loss.backward()
            optimizer.step()
            if ema is not None:
                ema.step(trainable)
            bar.update()
        history.append({"epoch": epoch, "steps": epoch * len(loader)})
    bar.close()
    if ema is not None:
        ema.copy_to(trainable)
    return FinetuneResult(model, None, history, adapter=_finish(model, cfg))


def dp_finetune(model: LDM, private: ImageSet, cfg: FinetuneConfig, progress: bool = True,
                on_epoch: Callable[[dict, FinetuneState], None] | None = None,
                resume: FinetuneState | None = None) -> FinetuneResult:
    """Fine-tunes attention layers cfg.layers of `model` (in place) so that the run is (ε, δ)-DP.

    on_epoch(record, state) is called after every epoch (a sweep reports and checkpoints there);
    resume continues from such a state: same plan, the accountant already holding the steps done.
    """
    if cfg.non_private:
        raise ValueError("dp_finetune got a non-private config; call finetune_non_private")
    cfg = cfg.for_data(len(private))  # a sampling rate → its batch B on the plan's N: what the loader and record see
    plan = plan_privacy(cfg, len(private))
    n = cfg.n_public or len(private)  # the public N of the plan: the only size the privacy record carries
    if resume and resume.sigma is not None and resume.sigma != plan.sigma:
        plan = resumed_plan(plan, resume.sigma, cfg)
    delta, q, steps, sigma, sigma_w = plan.delta, plan.q, plan.steps, plan.sigma, plan.warmup_sigma
    n_layers = len(attention_modules(model.unet))
    a, b = parse_layers(cfg.layers, n_layers)
    device = model.device
    start_epoch = resume.epoch if resume else 0
    # No recorded or reusable seed is set anywhere in a DP fine-tune. Poisson sampling and the Gaussian noise come
    # from `rng`: fresh OS entropy for this run and again for every resume, never recorded.
    rng = MechanismRandomness(secure=cfg.secure_rng)
    # The diffusion loss's timesteps, noise and label dropout draw from torch's global generator. Whatever ran before
    # in this process (a previous trial's secret batch sizes in a reused Ray actor, a validation generator's run, in a
    # reused Ray worker) leaves that generator in a state that depends on its private input; this run starts it from
    # fresh OS entropy instead, so its output depends on no other run's data. Never recorded.
    torch.manual_seed(secrets.randbits(63))

    # The autoencoder is public and frozen: encoding is a fixed per-image map, computed once.
    model.vae.requires_grad_(False)
    latents = model.encode(private.as_float()).cpu()
    trainable = select_trainable(model, cfg, a, b)
    n_trainable = sum(p.numel() for p in trainable)
    # the model's own weights (LoRA adds parameters it does not count)
    n_total = sum(p.numel() for m in (model.unet, model.embedder) for n, p in m.named_parameters() if "lora_" not in n)

    module = DiffusionLoss(model, cfg.label_dropout, cfg.multiplicity).train()
    if cfg.precision != "fp32":  # refused before any release (the warm-up's), not only in privatize
        check_precision(clipping_path(module, cfg.clipping), cfg.precision)
    named = _trainable_named(model)
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    ema = _ema(trainable, cfg)
    lr_plan = {"lr": cfg.lr, "lr_schedule": cfg.lr_schedule}
    if resume and resume.lr is not None and resume.lr != lr_plan:  # states from before it was recorded: not checked
        raise ConfigError(f"checkpoint was written by a run with {resume.lr}, this config has {lr_plan}; resume with the "
                          f"config it was started with, or delete it to restart the trial")
    if resume:
        missing = set(named) ^ set(resume.trainable)
        if missing:
            raise ConfigError(f"checkpoint does not match layers {a}-{b} of this model (differs in {sorted(missing)[:3]}…)")
        with torch.no_grad():
            for k, p in named.items():
                p.copy_(resume.trainable[k])
        optimizer.load_state_dict(resume.optimizer)
        if ema is not None:
            if resume.ema is None:
                raise ConfigError("checkpoint was written without an EMA of the weights; resume with the config it "
                                  "was started with, or delete it to restart the trial")
            ema.load_state_dict(resume.ema)
    if resume and resume.warmup_sigma != sigma_w:  # the accountant's history must be the run's own
        raise ConfigError(f"checkpoint was written by a run with warm-up σ_w = {resume.warmup_sigma}, this config plans "
                          f"{sigma_w}; resume with the config it was started with, or delete it to restart the trial")
    means = None
    if sigma_w is not None and not resume:  # a resumed run's weights already hold its one warm-up
        means = noisy_class_means(private, sigma_w, rng)  # the one DP release the accountant's prefix covers
        warm_up(model, module, trainable, means, cfg.warmup_steps, progress)
        ema = _ema(trainable, cfg)  # the average starts from the warmed-up weights
    loader = DataLoader(TensorDataset(latents, private.labels), batch_size=cfg.batch, shuffle=False)
    engine, dp_module, optimizer, dp_loader = privatize(module, optimizer, loader, sigma, cfg.clip, cfg.accountant,
                                                        rng=rng, steps_per_epoch=plan.steps_per_epoch,
                                                        clipping=cfg.clipping, n_public=n, draws=cfg.multiplicity,
                                                        precision=cfg.precision)
    clipping = "bookkeeping" if isinstance(optimizer, BookkeepingDPOptimizer) else "hooks"

    history = list(resume.history) if resume else []
    done = resume.steps if resume else 0
    if done or sigma_w is not None:  # the warm-up release and the steps already taken, for ε spent per epoch
        engine.accountant.history = accountant_history(sigma, q, done, sigma_w)
    bar = tqdm(total=steps, initial=done, desc=f"DP fine-tune {_what(cfg, a, b)}", disable=not progress, leave=False)

    taken = done  # logical steps so far, for the step size of the next one
    _set_lr(optimizer, lr_at(cfg, taken, steps))

    def on_step():
        nonlocal taken
        bar.update()
        if ema is not None:
            ema.step(trainable)  # post-processing of the noisy iterate: no privacy cost
        taken += 1
        _set_lr(optimizer, lr_at(cfg, taken, steps))  # a public function of the step count: no privacy cost
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            done += dp_sgd_epoch(dp_module, optimizer, dp_loader, trainable, device, cfg.physical_batch,
                                 on_step=on_step, draws=cfg.multiplicity)
            eps_spent = accountant_epsilon(engine.accountant, delta)  # RDP over RDP_ALPHAS, as epsilon_for
            # Divergence is judged on the DP output (the noisy weights), never on the private training loss.
            if not all(torch.isfinite(p).all() for p in trainable):
                raise FloatingPointError(f"DP fine-tune diverged: non-finite weights after epoch {epoch} with lr "
                                         f"{cfg.lr:g}, layers {a}-{b}; lower the learning rate")
            record = {"epoch": epoch, "eps_spent": eps_spent, "delta": delta, "steps": done}
            history.append(record)
            msg = f"epoch {epoch}/{cfg.epochs}: ε spent {eps_spent:.3f} (δ = {delta:g}, {cfg.accountant.upper()})"
            (bar.write if progress else log.info)(msg)
            if on_epoch is not None:
                state = FinetuneState(epoch, done, {k: p.detach().clone() for k, p in named.items()},
                                      optimizer.original_optimizer.state_dict(), list(history),
                                      ema.state_dict() if ema is not None else None, sigma_w, lr_plan, sigma)
                on_epoch(record, state)
    finally:
        bar.close()
        dp_module._close()  # Opacus hooks / the book-keeping tape off: a plain diffusers model again, even on error
    if ema is not None:
        ema.copy_to(trainable)  # the released weights are the average of the noisy iterates
    adapter = _finish(model, cfg)

    eps = epsilon_for(sigma, q, done, delta, cfg.accountant, sigma_w)
    if done != steps:
        raise RuntimeError(f"ran {done} DP steps but planned {steps}; the privacy plan does not match the run")
    if eps > cfg.eps * 1.001:
        raise RuntimeError(f"accountant reports ε = {eps:.4f} above the target {cfg.eps}; refusing to release")
    record = PrivacyRecord(
        eps_target=cfg.eps, eps=eps, delta=delta, accountant=cfg.accountant, eps_pld_check=plan.eps_pld_check,
        sigma=sigma, q=q, steps=steps, epochs=cfg.epochs, clip=cfg.clip, batch=cfg.batch, n=n,
        layers=f"{a}-{b}" if cfg.scope == "attention" else "unet",
        trainable_params=n_trainable, trainable_fraction=n_trainable / n_total,
        randomness="os-csprng" if cfg.secure_rng else "torch-generator-os-seeded", clipping=clipping,
        method=cfg.method, lora_rank=cfg.rank if cfg.method == "lora" else None, multiplicity=cfg.multiplicity,
        ema=cfg.ema, warmup_share=cfg.warmup, warmup_sigma=sigma_w)
    return FinetuneResult(model, record, history, adapter=adapter, warmup_means=means)


__all__ = ["dp_finetune", "finetune_non_private", "NOT_DP", "FinetuneResult", "FinetuneState", "DiffusionLoss", "ConfigError"]
