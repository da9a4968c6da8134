"""The public-only baseline: utility of the pretrained model before any private fine-tuning."""

from __future__ import annotations

from pathlib import Path

from dpsearch.config import EvaluateConfig, SampleConfig
from dpsearch.data import load_mnist
from dpsearch.evaluate import evaluate
from dpsearch.models import load_ldm
from dpsearch.outputs import write_json
from dpsearch.sample import sample, save_grid


def public_baseline(model_dir: Path, smp: SampleConfig, ev: EvaluateConfig, device: str = "cpu",
                    progress: bool = True, write: bool = True) -> dict:
    """Samples the pretrained model and scores it on the real MNIST test split (an oracle metric).
    With write, the result and a sample grid are kept in the model directory."""
    model_dir = Path(model_dir)
    model = load_ldm(model_dir, device)
    synthetic = sample(model, smp, progress=progress)
    _, test = load_mnist()
    res = evaluate(synthetic, test, ev, progress=progress)
    if write:
        save_grid(synthetic, model_dir / "baseline_samples.png")
        write_json(model_dir / "baseline.json", {**res, "sample_config": smp.model_dump()})
    return res
