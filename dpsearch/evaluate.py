"""Downstream utility of synthetic data: a CNN trained on synthetic images, and FID.

Metrics measured on the real private test split are *oracle* metrics: they are keyed
`oracle/...`, are not differentially private, and must never be used for selection.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from dpsearch.classifiers import DigitCNN, build_classifier
from dpsearch.config import EvaluateConfig
from dpsearch.data import ImageSet, printed_digits
from dpsearch.outputs import partial_path
from dpsearch.paths import home

log = logging.getLogger(__name__)
INCEPTION_CACHE = Path("/tmp/inception-2015-12-05.pt")  # where clean-fid keeps its download


@torch.no_grad()
def correct_count(net: nn.Module, data: ImageSet, batch: int = 1000) -> int:
    net.eval()
    correct = 0
    for i in range(0, len(data), batch):
        x = data.images[i: i + batch].float().div(255.0)
        correct += int((net(x).argmax(1) == data.labels[i: i + batch]).sum().item())
    return correct


def accuracy(net: nn.Module, data: ImageSet, batch: int = 1000) -> float:
    return correct_count(net, data, batch) / len(data)


def train_classifier(train: ImageSet, cfg: EvaluateConfig, desc: str = "classifier", progress: bool = True,
                     val: ImageSet | None = None, arch: str = "cnn") -> tuple[nn.Module, float]:
    """Trains on `train` only; the checkpoint is the epoch best on `val` (default: a held-out part of
    `train`). Returns (net, its accuracy on that validation set)."""
    torch.manual_seed(cfg.seed)
    perm = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(train)))
    if val is None:
        n_hold = max(1, int(len(train) * cfg.holdout))
        val = ImageSet(train.images[perm[:n_hold]], train.labels[perm[:n_hold]], train.num_classes, "holdout")
        fit_idx = perm[n_hold:]
    else:
        fit_idx = perm
    c, s = train.image_shape[0], train.image_shape[1]
    net = build_classifier(arch, c, train.num_classes, s)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.classifier_lr)
    best, best_state = -1.0, None
    bar = tqdm(range(cfg.classifier_epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        net.train()
        order = fit_idx[torch.randperm(len(fit_idx))]
        for i in range(0, len(order), cfg.classifier_batch):
            idx = order[i: i + cfg.classifier_batch]
            x = train.images[idx].float().div(255.0)
            loss = F.cross_entropy(net(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = accuracy(net, val)
        bar.set_postfix(val=f"{acc:.3f}")
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net.eval(), best


# --- FID ------------------------------------------------------------------------------------

def public_feature_extractor(cfg: EvaluateConfig) -> DigitCNN:
    """The offline FID extractor: a DigitCNN trained on public printed digits only, cached.

    Used where clean-fid's Inception weights (a download) are absent. FIDs from it are not
    comparable with Inception FIDs in papers; every FID is reported with its extractor's name.
    """
    path = home() / "models" / "fid-public-cnn-v1.pt"  # fixed recipe below: one extractor, comparable FIDs
    net = DigitCNN()
    if not path.exists():
        from dpsearch import shipped

        shipped.install_file(path.stem, path.name, path)  # ships with the package: trained on public digits only
    if path.exists():
        try:
            net.load_state_dict(torch.load(path, weights_only=True))
            return net.eval()
        except Exception as e:  # noqa: BLE001 - a corrupt cache is rebuilt, not fatal
            log.warning("FID extractor cache %s unreadable (%s); retraining", path, e)
    recipe = EvaluateConfig(classifier_epochs=3, seed=7)
    net, _ = train_classifier(printed_digits(10000, seed=7, progress=False), recipe, desc="FID extractor (public)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)  # two trials may train it at once
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)
    return net


def _features(data: ImageSet, extractor: str, cfg: EvaluateConfig, device: str) -> np.ndarray:
    if extractor == "inception":
        from cleanfid.features import build_feature_extractor

        model = build_feature_extractor("clean", torch.device(device))
        feats = []
        for i in range(0, len(data), 200):
            x = data.images[i: i + 200].float()
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=(299, 299), mode="bicubic", align_corners=False).clamp(0, 255)
            feats.append(model(x.to(device)).detach().cpu().numpy())
        return np.concatenate(feats)
    net = public_feature_extractor(cfg)
    with torch.no_grad():
        return torch.cat([net.embed(_as_digit_input(data.images[i: i + 1000])) for i in range(0, len(data), 1000)]).numpy()


_REFERENCE_STATS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _reference_statistics(data: ImageSet, extractor: str, cfg: EvaluateConfig, device: str):
    """(mean, covariance) of a reference set's features, computed once per process: every trial of a worker and every
    free candidate compares with the same real test split or validation set (10,000 images through the extractor
    each time, half of an evaluation's cost). Keyed by the images themselves, so another set is never mistaken for
    it; kept in memory only."""
    import hashlib

    images = data.images.contiguous()
    digest = hashlib.blake2b(images.numpy().tobytes(), digest_size=16).hexdigest()
    k = (extractor, tuple(images.shape), digest, str(device))
    if k not in _REFERENCE_STATS:
        f = _features(data, extractor, cfg, device)
        if len(_REFERENCE_STATS) >= 4:  # a sweep has one test split and at most one validation set
            _REFERENCE_STATS.pop(next(iter(_REFERENCE_STATS)))
        _REFERENCE_STATS[k] = (f.mean(0), np.cov(f, rowvar=False))
    return _REFERENCE_STATS[k]


def _as_digit_input(x: torch.Tensor) -> torch.Tensor:
    """The public CNN reads 28 × 28 grey digits: other images are averaged to grey and resized first (its FID
    then compares what a digit reader sees; clean-fid's Inception suits natural images better)."""
    x = x.float().div(255.0)
    if x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return x


def fid(a: ImageSet, b: ImageSet, cfg: EvaluateConfig, device: str = "cpu") -> tuple[float, str]:
    """(FID, extractor name), the distance computed by clean-fid's Fréchet distance."""
    import warnings

    from cleanfid.fid import frechet_distance
    from scipy import linalg

    extractor = cfg.fid_extractor
    if extractor == "auto":
        extractor = "inception" if INCEPTION_CACHE.exists() else "public-cnn"
    fa = _features(a, extractor, cfg, device)
    mb, cb = _reference_statistics(b, extractor, cfg, device)
    with warnings.catch_warnings():
        # scipy's sqrtm says "Matrix is singular" when features are constant over a set (a ReLU unit of the public CNN
        # that never fires): the covariance product is then rank-deficient, its square root still well defined, and
        # clean-fid checks the result itself (finite, imaginary part below 1e-3, else it raises).
        warnings.filterwarnings("ignore", message="Matrix is singular", category=linalg.LinAlgWarning)
        d = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), mb, cb)
    name = "clean-fid inception-v3" if extractor == "inception" else "public-cnn (DigitCNN on printed digits, 128-d)"
    return float(d), name


def evaluate(synthetic: ImageSet, real_test: ImageSet | None, cfg: EvaluateConfig = EvaluateConfig(),
             progress: bool = True, validation: ImageSet | None = None, count=None) -> dict:
    """Trains the downstream CNN on synthetic data only, then scores it.

    The objective is its accuracy on `validation`, the sweep's DP synthetic validation set (free
    post-processing of DP outputs), or, with `count` (privacy/noisy_count.py), its noisy accuracy on
    held-out private records (one accounted Gaussian count). `real_test` gives oracle metrics, never
    used to select.
    """
    net, holdout = train_classifier(synthetic, cfg, desc="downstream CNN on synthetic", progress=progress)
    out = {"synthetic/holdout_accuracy": holdout, "n_synthetic": len(synthetic)}
    if count is not None:
        out["objective"] = count.accuracy(correct_count(net, count.holdout))
    elif validation is not None:
        out["objective"] = accuracy(net, validation)
        out["synthetic/fid_to_validation"], out["fid_extractor"] = fid(synthetic, validation, cfg)
    if real_test is not None:
        if cfg.oracle_n is not None and cfg.oracle_n < len(real_test):
            real_test = real_test.take(torch.arange(cfg.oracle_n), f"{real_test.name}[:{cfg.oracle_n}]")
            out["oracle/n"] = cfg.oracle_n
        out["oracle/accuracy"] = accuracy(net, real_test)
        out["oracle/fid"], out["fid_extractor"] = fid(synthetic, real_test, cfg)
        where = f"the first {cfg.oracle_n} records of " if "oracle/n" in out else ""
        out["oracle/note"] = f"measured on {where}the real private test split: not DP, never used for selection"
    return out


@torch.no_grad()
def validation_loss(model, validation: ImageSet, n_max: int = 1000, seed: int = 0) -> float:
    """Mean diffusion loss of `model` on the DP synthetic validation set, with fixed noise and timesteps.

    A per-epoch signal computed only from DP outputs (free post-processing), so a scheduler such as
    ASHA may stop trials on it; the private training loss must not be used for that.
    """
    from dpsearch.models import diffusion_loss

    v = validation.subset(n_max, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    dev = model.device
    z = model.encode(v.as_float().to(dev))
    noise = torch.randn(z.shape, generator=gen).to(dev)
    t = torch.randint(0, model.scheduler.config.num_train_timesteps, (len(z),), generator=gen).to(dev)
    losses = diffusion_loss(model.unet, model.embedder, model.scheduler, z, v.labels.to(dev), 0.0, noise, t)
    return float(losses.mean())
