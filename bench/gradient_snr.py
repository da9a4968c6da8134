"""Signal-to-noise of one DP-SGD step on the pretrained model: why DP costs what it costs (docs/utility.md).

Per-sample gradients of the diffusion loss (one at a time, the trainable attention modules 1-7 and the
embedder) on 64 private images give: their norms (is everything clipped at C?), and the norm of the mean
of the clipped gradients, E‖ḡ‖ ≈ s·C (alignment s, from ‖mean of n unit vectors‖² ≈ s² + 1/n). Against it,
the Gaussian noise on the mean has norm σ·C·√d / B. σ comes from the PRV accountant for each (ε, B).

    python bench/gradient_snr.py --model ~/.cache/dpsearch/models/pretrained-<hash>
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from dpsearch.config import FinetuneConfig
from dpsearch.data import load_mnist
from dpsearch.finetune import DiffusionLoss, select_trainable
from dpsearch.models import load_ldm
from dpsearch.privacy.accounting import calibrate_sigma


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    model = load_ldm(a.model)
    images = load_mnist()[0].subset(a.n, seed=3)
    z = model.encode(images.as_float())
    params = select_trainable(model, FinetuneConfig(non_private=True), 1, 7)
    d = sum(q.numel() for q in params)
    loss = DiffusionLoss(model, 0.1).train()
    grads = []
    for i in range(a.n):
        for q in params:
            q.grad = None
        loss(z[i:i + 1], images.labels[i:i + 1]).sum().backward()
        grads.append(torch.cat([q.grad.flatten() for q in params]))
    g = torch.stack(grads)
    norms = g.norm(dim=1).numpy()
    m = (g / g.norm(dim=1, keepdim=True)).mean(0).norm().item()
    s = math.sqrt(max(m ** 2 - 1 / a.n, 0.0))
    print(f"trainable d = {d}; per-sample gradient norms: min {norms.min():.3f}, median {np.median(norms):.3f}, "
          f"max {norms.max():.3f} (every sample is clipped at C ≤ {norms.min():.3f})")
    print(f"mean of {a.n} clipped (unit) gradients: norm {m:.3f} → alignment s ≈ {s:.3f}: E[clipped mean] ≈ {s:.3f}·C")
    n_private, delta = 55_000, 1 / (55_000 * math.log(55_000))
    print("| ε | B | σ | noise on the mean σ√d/B (×C) | per-step SNR |")
    print("|---|---|---|---|---|")
    for eps in (10.0, 1.0):
        for batch in (1000, 4000):
            steps = a.epochs * math.ceil(n_private / batch)
            sigma = calibrate_sigma(eps, delta, batch / n_private, steps, "prv")
            noise = sigma * math.sqrt(d) / batch
            print(f"| {eps:g} | {batch} | {sigma:.3f} | {noise:.3f} | {s / noise:.2f} |")


if __name__ == "__main__":
    main()
