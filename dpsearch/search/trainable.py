"""One trial as a Ray Tune function trainable: config → DP fine-tune → sample → score, reported through
the release boundary every epoch and at the end."""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from dpsearch.data import ImageSet
from dpsearch.search.model_files import unpack_model
from dpsearch.search.options import METRIC
from dpsearch.space import SearchSpace


def _flat_privacy(p: dict) -> dict:
    keys = ("eps", "delta", "sigma", "q", "steps", "accountant", "trainable_params", "trainable_fraction", "eps_pld_check")
    return {f"privacy/{k}": p[k] for k in keys}


def total_minutes(seconds: float) -> int:
    """The only timing a trial releases: whole minutes, rounded up. Per-phase seconds are not released: the
    fine-tune's time tracks the sum of its Poisson batch sizes, an unnoised count of private records."""
    return math.ceil(seconds / 60)


def sweep_record(sweep: dict) -> dict:
    """The trial's provenance in its privacy.json: it was one trial of a search, so `dpsearch release` must
    headline the sweep's released (ε, δ) (read from the sweep's storage), never this trial's own ε."""
    from ray import tune

    return {"name": sweep["name"], "storage": str(sweep["storage"]), "trial": tune.get_context().get_trial_id()}


def dp_trial(config: dict, *, model_files: dict, private: ImageSet, validation: ImageSet | None, oracle: ImageSet | None,
             space_json: str, eps: float, seed: int, threads: int, batch_scale: float = 1.0,
             delta: float | None = None, count=None, sweep: dict | None = None,
             n_public: int | None = None) -> None:
    """config (from Optuna) → FinetuneConfig → the pipeline (DP fine-tune → sample → score on V, or by one
    noisy count on the validation slice); reports every epoch and at the end, through the release boundary.
    sweep ({"name", "storage"}): the sweep this trial belongs to, recorded in its privacy.json."""
    t0 = time.monotonic()
    import torch
    from ray import tune

    from dpsearch.checkpoints import report_verified, verify_local
    from dpsearch.device import pick_device
    from dpsearch.evaluate import validation_loss
    from dpsearch.finetune import FinetuneState
    from dpsearch.models import load_ldm
    from dpsearch.pipeline import run_pipeline, write_outputs
    from dpsearch.privacy.release import allowed, release

    torch.set_num_threads(threads)
    # Trials share a process (reuse_actors): dp_finetune starts torch's global generator from fresh OS entropy, so no
    # trial's draws depend on the state a previous trial's secret batch sizes left it in.
    space = SearchSpace.model_validate_json(space_json)
    # on a tuning slice: batch scaled, δ of the sweep, q planned from the slice's public size
    ft = space.finetune_config(config, eps, seed, batch_scale, delta, n_public)
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            d = Path(d)
            verify_local(d)  # a corrupt checkpoint is an error, never a silent restart from garbage
            if (d / "result.json").exists():  # finished before the sweep stopped: report it again, with only the
                stored = json.loads((d / "result.json").read_text())  # fields released now (an older one had time/*_s)
                tune.report({k: v for k, v in stored.items() if allowed(k)}, checkpoint=ckpt)
                return
            resume = FinetuneState.load(d / "state.pt")
    import ray

    device = pick_device("auto")
    model = load_ldm(unpack_model(model_files), device)
    where = {"node": ray.get_runtime_context().get_node_id(), "device": str(device)}  # which machine ran it

    def val_loss(m) -> float:  # a per-epoch signal from V only; the counting objective has none
        return validation_loss(m, validation) if validation is not None else float("nan")

    def on_epoch(rec: dict, state: FinetuneState) -> None:
        metrics = release({"epoch": rec["epoch"], "val_loss": val_loss(model),
                           "eps_spent": rec["eps_spent"], "delta": rec["delta"], METRIC: float("nan"), "done": False})
        with tempfile.TemporaryDirectory() as d:
            state.save(Path(d) / "state.pt")
            report_verified(metrics, Path(d))

    out = run_pipeline(model, private, ft, space.sample, space.evaluate, validation=validation, count=count, oracle=oracle,
                       device=str(device), progress=False, on_epoch=on_epoch, resume=resume)
    final = release({"epoch": ft.epochs, "val_loss": val_loss(out.model), "done": True,
                     **{k: v for k, v in out.scores.items() if isinstance(v, (int, float))},
                     **_flat_privacy(out.privacy), "layers": out.privacy["layers"],
                     "time/total_min": total_minutes(time.monotonic() - t0), **where})
    if sweep is not None:
        out.privacy = {**out.privacy, "sweep": sweep_record(sweep)}
    with tempfile.TemporaryDirectory() as d:
        write_outputs(Path(d), out, final)
        report_verified(final, Path(d))
