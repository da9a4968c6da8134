"""One trial as a Ray Tune function trainable: config → DP fine-tune → sample → score, reported through
the release boundary every epoch and at the end."""

from __future__ import annotations

import json
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


def dp_trial(config: dict, *, model_files: dict, private: ImageSet, validation: ImageSet, oracle: ImageSet | None,
             space_json: str, eps: float, seed: int, threads: int) -> None:
    """config (from Optuna) → FinetuneConfig → DP fine-tune → sample → score on V; reports every epoch."""
    import torch
    from ray import tune

    from dpsearch.checkpoints import report_verified, verify_local
    from dpsearch.device import pick_device
    from dpsearch.evaluate import evaluate, validation_loss
    from dpsearch.finetune import FinetuneState, dp_finetune
    from dpsearch.models import load_ldm, save_ldm
    from dpsearch.outputs import write_json
    from dpsearch.privacy.release import release
    from dpsearch.sample import sample, save_grid

    torch.set_num_threads(threads)
    space = SearchSpace.model_validate_json(space_json)
    ft = space.finetune_config(config, eps, seed)
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            d = Path(d)
            verify_local(d)  # a corrupt checkpoint is an error, never a silent restart from garbage
            if (d / "result.json").exists():  # finished before the sweep stopped: report it again
                tune.report(json.loads((d / "result.json").read_text()), checkpoint=ckpt)
                return
            resume = FinetuneState.load(d / "state.pt")
    import ray

    device = pick_device("auto")
    model = load_ldm(unpack_model(model_files), device)
    where = {"node": ray.get_runtime_context().get_node_id(), "device": str(device)}  # which machine ran it

    def on_epoch(rec: dict, state: FinetuneState) -> None:
        metrics = release({"epoch": rec["epoch"], "val_loss": validation_loss(model, validation),
                           "eps_spent": rec["eps_spent"], "delta": rec["delta"], METRIC: float("nan"), "done": False})
        with tempfile.TemporaryDirectory() as d:
            state.save(Path(d) / "state.pt")
            report_verified(metrics, Path(d))

    t = time.time()
    res = dp_finetune(model, private, ft, progress=False, on_epoch=on_epoch, resume=resume)
    t_ft = time.time() - t
    t = time.time()
    synthetic = sample(res.model, space.sample, progress=False)
    t_sample = time.time() - t
    t = time.time()
    scores = evaluate(synthetic, oracle, space.evaluate, progress=False, validation=validation)
    t_eval = time.time() - t
    final = release({"epoch": ft.epochs, "val_loss": validation_loss(res.model, validation), "done": True,
                     **{k: v for k, v in scores.items() if isinstance(v, (int, float))},
                     **_flat_privacy(res.privacy.to_dict()), "layers": res.privacy.layers,
                     "time/finetune_s": t_ft, "time/sample_s": t_sample, "time/evaluate_s": t_eval, **where})
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_ldm(res.model.to("cpu"), d / "model", extra={"privacy": res.privacy.to_dict()})
        write_json(d / "privacy.json", res.privacy.to_dict())
        write_json(d / "history.json", {"epochs": res.history})
        save_grid(synthetic, d / "samples.png")
        write_json(d / "result.json", final)
        report_verified(final, d)
