"""One trial, top to bottom: load pretrained → DP fine-tune layers a-b → sample → evaluate → write."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dpsearch.config import EvaluateConfig, FinetuneConfig, SampleConfig
from dpsearch.data import ImageSet
from dpsearch.evaluate import evaluate
from dpsearch.finetune import NOT_DP, dp_finetune, finetune_non_private
from dpsearch.privacy.dpsgd import plan_privacy
from dpsearch.models import load_ldm, save_ldm
from dpsearch.outputs import atomic_dir, check_output, write_json
from dpsearch.sample import sample, save_grid


def run_trial(pretrained: str | Path, private: ImageSet, oracle_test: ImageSet | None, ft: FinetuneConfig,
              smp: SampleConfig, ev: EvaluateConfig, out: Path, overwrite: bool = False, device: str = "cpu",
              progress: bool = True) -> dict:
    """Writes out/{model/, privacy.json, history.json, synthetic.npz, samples.png, metrics.json}."""
    check_output(out, overwrite)
    if ft.non_private:
        ft.check_against_data(len(private))
    else:
        plan_privacy(ft, len(private))  # bad ε/δ/batch fail here, before any training
    times = {}
    t = time.time()
    model = load_ldm(pretrained, device)
    times["load"] = time.time() - t
    t = time.time()
    result = (finetune_non_private if ft.non_private else dp_finetune)(model, private, ft, progress=progress)
    privacy = NOT_DP if ft.non_private else result.privacy.to_dict()
    times["finetune"] = time.time() - t
    t = time.time()
    synthetic = sample(result.model, smp, progress=progress)
    times["sample"] = time.time() - t
    t = time.time()
    metrics = evaluate(synthetic, oracle_test, ev, progress=progress)
    times["evaluate"] = time.time() - t
    summary = {"privacy": privacy, "metrics": metrics, "seconds": times,
               "pretrained": str(pretrained), "finetune_config": json.loads(ft.model_dump_json()),
               "sample_config": json.loads(smp.model_dump_json())}
    with atomic_dir(out, overwrite) as tmp:
        save_ldm(result.model.to("cpu"), tmp / "model", extra={"privacy": privacy})
        write_json(tmp / "privacy.json", privacy)
        write_json(tmp / "history.json", {"epochs": result.history})
        synthetic.save(tmp / "synthetic.npz")
        save_grid(synthetic, tmp / "samples.png")
        write_json(tmp / "metrics.json", summary)
    return summary
