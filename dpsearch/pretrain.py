"""Public pretraining: the autoencoder, then the LDM, on public data only (never the private set)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dpsearch.config import PUBLIC_FOLDER, PretrainConfig
from dpsearch.data import load_dataset
from dpsearch.device import pick_device, seed_everything
from dpsearch.models import LDM, build_ldm, diffusion_loss, load_ldm, save_ldm
from dpsearch.models.ldm import ModelError
from dpsearch.outputs import atomic_dir
from dpsearch.paths import home

log = logging.getLogger(__name__)
KL_WEIGHT = 1e-6  # a near-deterministic autoencoder, as in LDM's f=4 KL models


def config_hash(cfg: PretrainConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]


def default_model_dir(cfg: PretrainConfig) -> Path:
    """Cache key = the whole pretraining config, so a changed config never reuses a stale model."""
    return home() / "models" / f"pretrained-{config_hash(cfg)}"


def _batches(n: int, batch: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch):
        yield perm[i: i + batch]


def train_autoencoder(model: LDM, data: torch.Tensor, cfg: PretrainConfig, gen: torch.Generator, device) -> list[float]:
    vae = model.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.ae_lr)
    p = (model.meta["padded_size"] - model.meta["image_size"]) // 2
    losses = []
    steps = cfg.ae_epochs * -(-len(data) // cfg.ae_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.ae_lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(total=steps, desc="pretrain autoencoder (public)", leave=False)
    for _ in range(cfg.ae_epochs):
        for idx in _batches(len(data), cfg.ae_batch, gen):
            x = F.pad(data[idx].to(device), (p, p, p, p), value=-1.0)
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=None)).sample
            loss = F.mse_loss(rec, x) + KL_WEIGHT * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update()
    bar.close()
    vae.eval().requires_grad_(False)
    return losses


def train_ldm(model: LDM, latents: torch.Tensor, labels: torch.Tensor, cfg: PretrainConfig, gen, device) -> list[float]:
    unet, emb = model.unet.train(), model.embedder.train()
    params = [*unet.parameters(), *emb.parameters()]
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.ldm_lr, weight_decay=0.0)
    steps = cfg.ldm_epochs * -(-len(latents) // cfg.ldm_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.ldm_lr, total_steps=steps, pct_start=0.05)
    losses = []
    bar = tqdm(total=steps, desc="pretrain LDM (public)", leave=False)
    for _ in range(cfg.ldm_epochs):
        for idx in _batches(len(latents), cfg.ldm_batch, gen):
            loss = diffusion_loss(unet, emb, model.scheduler, latents[idx].to(device), labels[idx].to(device),
                                  cfg.label_dropout).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update()
    bar.close()
    unet.eval().requires_grad_(False)
    emb.eval().requires_grad_(False)
    return losses


def pretrain(cfg: PretrainConfig, out: Path | None = None, overwrite: bool = False, device: str = "auto") -> Path:
    """Trains AE then LDM on cfg.public (a registered public source only) and saves the model; reuses the
    cached model when present, and installs the shipped one when the cache has none (dpsearch/shipped)."""
    shippable = out is None and not overwrite  # the default location only: an explicit --out means "train here"
    out = Path(out) if out else default_model_dir(cfg)
    if shippable and not out.exists():
        from dpsearch import shipped

        shipped.install_dir(out.name, out)  # the default config's model ships with the package (public data only)
    if out.exists() and not overwrite:
        try:
            load_ldm(out)
            log.info("reusing pretrained model %s", out)
            return out
        except ModelError as e:
            raise ModelError(f"{e}\n(cached pretrained model at {out}; pass --overwrite to rebuild it)") from e
    dev = pick_device(device)
    gen = seed_everything(cfg.seed)
    t0 = time.time()
    source = cfg.public.replace(PUBLIC_FOLDER, "folder:", 1) if cfg.public.startswith(PUBLIC_FOLDER) else cfg.public
    public, _ = load_dataset(source, size=cfg.model.image_size, channels=cfg.model.channels, seed=cfg.seed, n=cfg.n_public)
    public = public.subset(cfg.n_public, seed=cfg.seed)
    model = build_ldm(cfg.model).to(dev)
    x = public.as_float()
    ae_losses = train_autoencoder(model, x, cfg, gen, dev)
    with torch.no_grad():
        model.vae.register_to_config(scaling_factor=1.0)
        z = model.encode(x)
        scale = float(1.0 / z.std())
        model.vae.register_to_config(scaling_factor=scale)
        z = z * scale
    ldm_losses = train_ldm(model, z, public.labels, cfg, gen, dev)
    info = {"pretrain_config": json.loads(cfg.model_dump_json()), "public_data": cfg.public, "n_public": len(public),
            "ae_final_loss": sum(ae_losses[-20:]) / len(ae_losses[-20:]),
            "ldm_final_loss": sum(ldm_losses[-20:]) / len(ldm_losses[-20:]),
            "latent_scaling_factor": scale, "seconds": time.time() - t0, "trained_on": "public data only"}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_ldm(model.to("cpu"), tmp, extra={"pretraining": info})
    log.info("pretrained model saved to %s in %.0fs", out, info["seconds"])
    return out
