"""One trial outside a sweep (`dpsearch run`): the pipeline, written to a directory atomically."""

from __future__ import annotations

import json
from pathlib import Path

from dpsearch.config import EvaluateConfig, FinetuneConfig, SampleConfig
from dpsearch.data import ImageSet
from dpsearch.outputs import atomic_dir, check_output
from dpsearch.pipeline import run_pipeline, write_outputs
from dpsearch.privacy.dpsgd import plan_privacy


def run_trial(pretrained: str | Path, private: ImageSet, oracle_test: ImageSet | None, ft: FinetuneConfig,
              smp: SampleConfig, ev: EvaluateConfig, out: Path, overwrite: bool = False, device: str = "cpu",
              progress: bool = True) -> dict:
    """Writes out/{model/, privacy.json, history.json, synthetic.npz, samples.png, result.json}."""
    check_output(out, overwrite)
    if ft.non_private:
        ft.check_against_data(len(private))
    else:
        plan_privacy(ft, len(private))  # bad ε/δ/batch fail here, before any training
    o = run_pipeline(pretrained, private, ft, smp, ev, oracle=oracle_test, device=device, progress=progress)
    summary = {"privacy": o.privacy, "metrics": o.scores, "seconds": o.seconds, "pretrained": str(pretrained),
               "finetune_config": json.loads(ft.model_dump_json()), "sample_config": json.loads(smp.model_dump_json())}
    with atomic_dir(out, overwrite) as tmp:
        write_outputs(tmp, o, summary, synthetic_npz=True)
    return summary
