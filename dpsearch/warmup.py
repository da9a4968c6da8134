"""The class-mean warm-up's training: the trainable weights fitted to augmented copies of the DP class means.

Pure post-processing of privacy/class_means.py's release: nothing here reads a private record. The means are
blurry prototypes, so each step draws random small affine copies of them (rotation, scale, shift), the
"easy" data of DP-FETA's easy-to-hard curriculum; DP-SGD on the real images follows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dpsearch.data import ImageSet
from dpsearch.models import LDM

BATCH = 64  # augmented copies per step
LR = 5e-4  # the non-private recipe's learning rate (docs/utility.md)
DEGREES, SCALE, SHIFT = 12.0, (0.85, 1.1), 0.08  # shift: a fraction of the image size


def augment(means: torch.Tensor, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n random affine copies of the [K, C, H, W] means in [0, 1], cycling through the classes: (images in [-1, 1], labels)."""
    k = means.shape[0]
    labels = torch.arange(n) % k

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = u(-DEGREES, DEGREES) * math.pi / 180
    scale = u(*SCALE)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u(-2 * SHIFT, 2 * SHIFT)], 1),
                         torch.stack([sin, cos, u(-2 * SHIFT, 2 * SHIFT)], 1)], 1)  # grid coordinates span [-1, 1]
    x = means[labels]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False).mul(2).sub(1), labels


def warm_up(model: LDM, loss_module: torch.nn.Module, trainable: list[torch.nn.Parameter], means: torch.Tensor,
            steps: int, progress: bool = True) -> None:
    """`steps` Adam steps of the diffusion loss on augmented means (in place, on the plain module: before DP-SGD)."""
    optimizer = torch.optim.Adam(trainable, lr=LR)
    for _ in tqdm(range(steps), desc="warm-up on DP class means", disable=not progress, leave=False):
        images, labels = augment(means, BATCH)
        with torch.no_grad():
            latents = model.encode(images)
        optimizer.zero_grad(set_to_none=True)
        loss_module(latents, labels.to(model.device)).mean().backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def means_as_images(means: torch.Tensor) -> ImageSet:
    """The released means as an image set, one per class, for a grid a person can look at."""
    k = means.shape[0]
    return ImageSet.from_float(means * 2 - 1, torch.arange(k), k, "dp-class-means")


__all__ = ["augment", "means_as_images", "warm_up"]
