"""One trial, top to bottom: load pretrained → DP fine-tune layers a-b → sample → evaluate → write."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dpsearch.config import EvaluateConfig, FinetuneConfig, SampleConfig
from dpsearch.data import ImageSet
from dpsearch.evaluate import evaluate
from dpsearch.finetune import dp_finetune
from dpsearch.privacy.dpsgd import plan_privacy
from dpsearch.models import load_ldm, save_ldm
from dpsearch.outputs import atomic_dir, check_output, write_json
from dpsearch.sample import sample, save_grid


def run_trial(pretrained: str | Path, private: ImageSet, oracle_test: ImageSet | None, ft: FinetuneConfig,
              smp: SampleConfig, ev: EvaluateConfig, out: Path, overwrite: bool = False, device: str = "cpu",
              progress: bool = True) -> dict:
    """Writes out/{model/, privacy.json, history.json, synthetic.npz, samples.png, metrics.json}."""
    check_output(out, overwrite)
    plan_privacy(ft, len(private))  # bad ε/δ/batch fail here, before any training
    times = {}
    t = time.time()
    model = load_ldm(pretrained, device)
    times["load"] = time.time() - t
    t = time.time()
    result = dp_finetune(model, private, ft, progress=progress)
    times["finetune"] = time.time() - t
    t = time.time()
    synthetic = sample(result.model, smp, progress=progress)
    times["sample"] = time.time() - t
    t = time.time()
    metrics = evaluate(synthetic, oracle_test, ev, progress=progress)
    times["evaluate"] = time.time() - t
    summary = {"privacy": result.privacy.to_dict(), "metrics": metrics, "seconds": times,
               "pretrained": str(pretrained), "finetune_config": json.loads(ft.model_dump_json()),
               "sample_config": json.loads(smp.model_dump_json())}
    with atomic_dir(out, overwrite) as tmp:
        save_ldm(result.model.to("cpu"), tmp / "model", extra={"privacy": result.privacy.to_dict()})
        write_json(tmp / "privacy.json", result.privacy.to_dict())
        write_json(tmp / "history.json", {"epochs": result.history})
        synthetic.save(tmp / "synthetic.npz")
        save_grid(synthetic, tmp / "samples.png")
        write_json(tmp / "metrics.json", summary)
    return summary
