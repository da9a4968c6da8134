"""`dpsearch sweep --plan`'s wall-time estimate on this machine: short pipeline runs on random images (never
the private data) time a DP fine-tune, sampling and the downstream classifier per image, and the
design's counts of each (trials, epochs, planned slice sizes, samples, free candidates) scale them up.

A cost model, not a measurement of the sweep: it leaves out Ray's start, parallel efficiency and the ε solve,
so it is printed as an estimate."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from dpsearch.config import EvaluateConfig, FinetuneConfig
from dpsearch.data import ImageSet
from dpsearch.search.options import SweepOptions
from dpsearch.space import SearchSpace


def _noise_images(model, n: int) -> ImageSet:
    size, channels, classes = model.meta["image_size"], model.meta["channels"], model.meta["num_classes"]
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
                    torch.arange(n) % classes, classes, "timing probe (random pixels)")


def probe_seconds(model_dir: Path, space: SearchSpace) -> dict:
    """Seconds per image: DP fine-tune (per example and epoch), sampling, classifier (per image and epoch). After a
    warm-up run, two short pipeline runs on random pixels, one four times the other: their difference leaves out
    what does not grow with the data (loading, σ calibration at the same q and steps)."""
    from dpsearch.models import load_ldm
    from dpsearch.pipeline import run_pipeline

    r, pb = space.reference, space.physical_batch
    ev = EvaluateConfig(**{**space.evaluate.model_dump(), "classifier_epochs": 1})
    runs = []
    for k in (1, 1, 4):  # the first run warms up (allocations, kernels): without it the difference reads ≈ 0
        model = load_ldm(model_dir)
        cfg = FinetuneConfig(eps=10.0, delta=1e-5, layers=r.layers, clip=r.clip, batch=k * pb // 2, epochs=1,
                             lr=r.lr, physical_batch=pb, accountant="rdp")
        smp = space.sample.model_copy(update={"per_class": 4 * k})
        runs.append(run_pipeline(model, _noise_images(model, k * pb), cfg, smp, ev, progress=False).seconds)
    classes = model.meta["num_classes"]
    per = {key: max(0.0, (runs[2][key] - runs[1][key])) for key in ("finetune", "sample", "evaluate")}
    return {"train": per["finetune"] / (3 * pb), "sample": per["sample"] / (12 * classes),
            "classifier": per["evaluate"] / (12 * classes), "classes": classes}


def estimate(design, space: SearchSpace, model_dir: Path, opts: SweepOptions) -> str:
    s = probe_seconds(model_dir, space)
    # the DP fine-tune's cost grows with epochs × noise draws per image (multiplicity)
    epochs = statistics.mean(space.params.epochs.values()) * statistics.mean(space.params.multiplicity.values())
    n_tune = design.n_public["tuning"] or len(design.trial_data)
    per_trial_images = space.sample.per_class * s["classes"]
    scored = per_trial_images * (s["sample"] + space.evaluate.classifier_epochs * s["classifier"])
    k = opts.mean_trials if opts.private_selection else opts.trials
    trials = k * (epochs * n_tune * s["train"] + scored)
    validation = 0.0 if design.counts else (
        space.reference.epochs * space.reference.multiplicity * (design.n_public["validation"] or len(design.validation_data)) * s["train"]
        + space.validation.per_class * s["classes"] * s["sample"])
    final = len(space.free.combinations()) * scored + space.release.n * s["sample"]
    if design.retrains:
        final += epochs * design.n_public["final"] * s["train"]
    total = trials + validation + final
    parts = f"trials {trials / 60:.0f}" + (f", validation set {validation / 60:.0f}" if validation else "") + \
        f", final stage {final / 60:.0f}"
    mean = " (K random under private selection: its mean)" if opts.private_selection else ""
    return (f"estimated wall time on this machine: {total / 60:.0f} min ({parts}){mean}; from probes on random "
            f"images ({torch.get_num_threads()} threads), one trial at a time, Ray's start and the ε solve not included")
