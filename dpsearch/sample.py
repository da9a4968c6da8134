"""DDIM (or DPM-Solver++) sampling to a labelled, class-balanced synthetic dataset, and PNG sample grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from PIL import Image
from tqdm import tqdm

from dpsearch.config import SampleConfig
from dpsearch.data import ImageSet
from dpsearch.models import LDM


def _scheduler(model: LDM, name: str):
    """A fresh sampling scheduler built from the model's training noise schedule."""
    if name == "dpm++":  # multistep: reaches DDIM's quality in fewer UNet calls (bench/sampling.py measures it)
        return DPMSolverMultistepScheduler.from_config(model.scheduler.config, algorithm_type="dpmsolver++",
                                                       solver_order=2, thresholding=False)
    return DDIMScheduler.from_config(model.scheduler.config, clip_sample=False)


@torch.no_grad()
def sample(model: LDM, cfg: SampleConfig, progress: bool = True) -> ImageSet:
    """cfg.per_class images of every class. Classifier-free guidance when cfg.guidance ≠ 1."""
    k = model.meta["num_classes"]
    labels = torch.arange(k).repeat_interleave(cfg.per_class)
    # Latents are unbounded: x0-clipping (diffusers' pixel-space default) must be off, whatever
    # the saved scheduler config says (models pretrained before this fix carry clip_sample=True).
    sched = _scheduler(model, cfg.scheduler)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = model.device
    unet, emb = model.unet.eval(), model.embedder.eval()
    shape = (unet.config.in_channels, model.latent_size, model.latent_size)
    guided = cfg.guidance != 1.0
    out = []
    batches = range(0, len(labels), cfg.batch)
    bar = tqdm(total=len(batches) * cfg.steps, desc=f"{cfg.scheduler.upper()} sampling", disable=not progress, leave=False)
    for i in batches:
        sched.set_timesteps(cfg.steps)  # resets a multistep solver's history between batches
        y = labels[i: i + cfg.batch].to(dev)
        z = torch.randn((len(y), *shape), generator=gen).to(dev)
        cond = emb(y)
        if guided:
            cond = torch.cat([cond, emb(torch.full_like(y, emb.null_class))])
        for t in sched.timesteps:
            zin = torch.cat([z, z]) if guided else z
            eps = unet(zin, t, encoder_hidden_states=cond).sample
            if guided:
                e_c, e_u = eps.chunk(2)
                eps = e_u + cfg.guidance * (e_c - e_u)
            z = sched.step(eps, t, z).prev_sample
            bar.update()
        out.append(model.decode(z).cpu())
    bar.close()
    names = tuple(model.meta.get("class_names") or ())  # an SD model's label names, carried to the release
    return ImageSet.from_float(torch.cat(out), labels, k, "synthetic", names)


def save_grid(images: ImageSet, path: Path, per_class: int = 10, scale: int = 2) -> Path:
    """One row per class, `per_class` images each: the picture a person checks first."""
    rows = []
    for c in range(images.num_classes):
        idx = (images.labels == c).nonzero().flatten()[:per_class]
        row = images.images[idx].numpy()
        if len(row) < per_class:
            row = np.concatenate([row, np.zeros((per_class - len(row), *row.shape[1:]), np.uint8)])
        rows.append(np.concatenate(list(row), axis=-1))
    grid = np.concatenate(rows, axis=-2)  # [C, H*k, W*n]
    grid = grid[0] if grid.shape[0] == 1 else grid.transpose(1, 2, 0)
    img = Image.fromarray(grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return Path(path)
