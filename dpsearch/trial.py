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


def release_trial(trial_dir: Path, out: Path, smp: SampleConfig, oracle_test: ImageSet | None = None,
                  protocol: str = "dpimagebench", overwrite: bool = False, device: str = "cpu",
                  progress: bool = True) -> dict:
    """Samples the released data set from a finished trial's model (post-processing: no privacy cost), scores
    it under the protocol when a real test split is given (oracle), and writes it with its data card."""
    from dpsearch.models import load_ldm
    from dpsearch.protocol import DPIMAGEBENCH, score
    from dpsearch.sample import sample
    from dpsearch.synthetic_release import write_release

    trial_dir = Path(trial_dir)
    check_output(out, overwrite)
    try:
        privacy = json.loads((trial_dir / "privacy.json").read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{trial_dir} is not a finished trial (privacy.json unreadable: {e}); "
                                f"pass the directory `dpsearch run` wrote") from e
    if privacy.get("dp", True) and "covers" not in privacy:  # a sweep's final/ states its own coverage
        privacy["covers"] = ("this one DP fine-tune. If the model was selected from a sweep, the guarantee of the "
                             "release is the sweep's released (ε, δ) (`dpsearch report SWEEP`), not this trial's")
    model = load_ldm(trial_dir, device)
    synthetic = sample(model, smp, progress=progress)
    oracle = {}
    if oracle_test is not None and protocol == "dpimagebench" and len(synthetic) == DPIMAGEBENCH.n_synthetic:
        oracle = {k: v for k, v in score(synthetic, oracle_test, DPIMAGEBENCH, seed=smp.seed, progress=progress).items()
                  if k.startswith("oracle/") or k == "protocol"}
    config = {"trial": str(trial_dir), "sample_config": json.loads(smp.model_dump_json())}
    result = trial_dir / "result.json"
    if result.exists():
        config["finetune_config"] = json.loads(result.read_text()).get("finetune_config")
    write_release(synthetic, out, name=Path(out).name, privacy=privacy, configuration=config, oracle=oracle,
                  overwrite=overwrite, progress=progress)
    return {"release": str(out), "privacy": privacy, "oracle": oracle, "n_images": len(synthetic)}
