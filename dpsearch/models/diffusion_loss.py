"""The LDM's training objective, shared by public pretraining, the DP fine-tune and validation scoring."""

from __future__ import annotations

import torch


def diffusion_loss(unet, embedder, scheduler, latents, labels, label_dropout: float,
                   noise: torch.Tensor | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example ε-prediction loss, shape [B]: the per-sample criterion DP-SGD clips.

    noise and t are drawn here unless given (tests pass them to compare against a reference).
    """
    b = latents.shape[0]
    noise = torch.randn_like(latents) if noise is None else noise
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=latents.device) if t is None else t
    if label_dropout > 0:
        drop = torch.rand(b, device=latents.device) < label_dropout
        labels = torch.where(drop, torch.full_like(labels, embedder.null_class), labels)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=embedder(labels)).sample
    return (pred - noise).pow(2).flatten(1).mean(1)
