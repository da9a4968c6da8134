"""DPImageBench's evaluation protocol, the one every number compared with the field's table uses.

Private set: N = 55,000 MNIST training images (the other 5,000 are DPImageBench's sensitive validation
split, unused here), δ = 1/(N ln N). The model samples 60,000 labelled images, 6,000 per class; 55,000 train
each classifier, 5,000 *synthetic* images pick its checkpoint; the real test split is scored once per
classifier (oracle, never selects) and reported as DPImageBench reports it: the best classifier and the mean.
DPImageBench's classifiers (ResNet, WRN, ResNeXt, GPU-trained) are replaced by the two we can train on a
2-core CPU: the DPDM CNN and a small ResNet (dpsearch/classifiers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dpsearch.config import EvaluateConfig
from dpsearch.data import ImageSet
from dpsearch.evaluate import accuracy, train_classifier

N_PRIVATE = 55_000
N_SYNTHETIC = 60_000
N_SYNTHETIC_VAL = 5_000


def benchmark_delta(n: int = N_PRIVATE) -> float:
    """δ = 1/(N ln N): below 1/N by the factor ln N, DPImageBench's choice (≈ 1.67e-6 for N = 55,000)."""
    return 1.0 / (n * math.log(n))


@dataclass(frozen=True)
class Protocol:
    name: str = "dpimagebench"
    n_synthetic: int = N_SYNTHETIC
    n_val: int = N_SYNTHETIC_VAL
    classifiers: tuple[tuple[str, int], ...] = (("cnn", 10), ("resnet", 4))  # (arch, epochs)

    def describe(self) -> str:
        arch = ", ".join(f"{a} {e} epochs" for a, e in self.classifiers)
        return (f"{self.name}: {self.n_synthetic - self.n_val} synthetic train / {self.n_val} synthetic validation "
                f"(checkpoint), classifiers {arch}; oracle = real test split, best and mean over classifiers")


DPIMAGEBENCH = Protocol()


def split_synthetic(synthetic: ImageSet, n_val: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A class-stratified split: n_val / K validation images from every class."""
    rng = np.random.default_rng(seed)
    per_class = n_val // synthetic.num_classes
    val_idx = []
    for c in range(synthetic.num_classes):
        idx = (synthetic.labels == c).nonzero().flatten().numpy()
        if len(idx) <= per_class:
            raise ValueError(f"class {c} has {len(idx)} synthetic images; the protocol needs more than {per_class}")
        val_idx.append(rng.choice(idx, per_class, replace=False))
    val = torch.from_numpy(np.concatenate(val_idx))
    mask = torch.ones(len(synthetic), dtype=torch.bool)
    mask[val] = False
    return synthetic.take(mask, "synthetic-train"), synthetic.take(val, "synthetic-val")


def score(synthetic: ImageSet, real_test: ImageSet, protocol: Protocol = DPIMAGEBENCH, seed: int = 0,
          progress: bool = True) -> dict:
    """Oracle accuracy of synthetic data under `protocol` (metrics on the real test split: not DP, choose nothing)."""
    if len(synthetic) != protocol.n_synthetic:
        raise ValueError(f"protocol {protocol.name} scores {protocol.n_synthetic} synthetic images, got {len(synthetic)}")
    train, val = split_synthetic(synthetic, protocol.n_val, seed)
    out: dict = {"protocol": protocol.describe(), "n_synthetic": len(synthetic)}
    accs = []
    for arch, epochs in protocol.classifiers:
        cfg = EvaluateConfig(classifier_epochs=epochs, seed=seed)
        net, val_acc = train_classifier(train, cfg, desc=f"{arch} on synthetic", progress=progress, val=val, arch=arch)
        acc = accuracy(net, real_test)
        out[f"synthetic/val_accuracy_{arch}"] = val_acc
        out[f"oracle/accuracy_{arch}"] = acc
        accs.append(acc)
    out["oracle/accuracy"] = max(accs)
    out["oracle/accuracy_mean"] = float(np.mean(accs))
    out["oracle/note"] = "measured on the real test split: not DP, never used for selection"
    return out
