"""The DP class-mean release behind the warm-up: one Gaussian mechanism on per-class pixel sums and counts.

DP-FETA's "central images" (DPImageBench's largest lever at ε = 1): what a class looks like on average is
cheap to release under DP, and a model that has seen it starts DP-SGD closer to the data. Each record adds
its image x ∈ [0, 1]^d to its class's sum and h = √d/4 to its class's count, one block of the concatenated
vector [sums | counts]; under add/remove of one record that vector moves by √(‖x‖² + h²) ≤ √(d + h²) = Δ,
in one class's block only. So [sums | counts] + N(0, (σ_w·Δ)² I) is one Gaussian release of noise
multiplier σ_w, accounted as (σ_w, q = 1, 1 step) before the DP-SGD steps (privacy/accounting.py).
Everything after (dividing, clamping, augmenting, training on it) is post-processing. The count's weight
h = √d/4 costs 3% more noise on the sums and leaves the counts' relative error 4·σ_w·Δ/(√d·n_c): a few percent.
"""

from __future__ import annotations

import math

import torch

from dpsearch.data import ImageSet
from dpsearch.privacy.randomness import MechanismRandomness

COUNT_WEIGHT = 0.25  # h / √d


def sensitivity(d: int) -> float:
    """Δ of [sums | counts] for images with d values in [0, 1]."""
    return math.sqrt(d * (1.0 + COUNT_WEIGHT ** 2))


def class_sums_and_counts(data: ImageSet) -> torch.Tensor:
    """The query itself, before noise: [K, d + 1], row c = (Σ x_i, h·n_c) over the records of class c."""
    x = data.images.float().div(255.0).flatten(1)  # [N, d] in [0, 1]: ‖x‖² ≤ d without clipping
    k, d = data.num_classes, x.shape[1]
    return torch.cat([torch.zeros(k, d).index_add_(0, data.labels, x),
                      COUNT_WEIGHT * math.sqrt(d) * torch.bincount(data.labels, minlength=k).float().unsqueeze(1)], 1)


def noisy_class_means(data: ImageSet, sigma: float, rng: MechanismRandomness) -> torch.Tensor:
    """[K, C, H, W] in [0, 1]: each class's mean image, from one Gaussian release of noise multiplier `sigma`."""
    query = class_sums_and_counts(data)
    d = query.shape[1] - 1
    released = query + rng.gaussian_like(query, sigma * sensitivity(d))
    counts = (released[:, d] / (COUNT_WEIGHT * math.sqrt(d))).clamp(min=1.0)  # post-processing from here on
    return (released[:, :d] / counts.unsqueeze(1)).clamp(0.0, 1.0).view(data.num_classes, *data.images.shape[1:])


__all__ = ["class_sums_and_counts", "noisy_class_means", "sensitivity", "COUNT_WEIGHT"]
