"""One trial, top to bottom: load → fine-tune → sample → score, and the one writer of what it releases.

Every caller runs this: `dpsearch run` and `dpsearch finetune`, the sweep's Ray trainable and its DP
validation generator. None of them fine-tunes, samples or scores by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dpsearch.config import EvaluateConfig, FinetuneConfig, SampleConfig
from dpsearch.data import ImageSet
from dpsearch.evaluate import evaluate
from dpsearch.finetune import NOT_DP, FinetuneState, dp_finetune, finetune_non_private
from dpsearch.models import LDM, load_ldm, save_ldm
from dpsearch.models.lora import save_lora
from dpsearch.outputs import write_json
from dpsearch.sample import sample, save_grid
from dpsearch.warmup import means_as_images


@dataclass
class TrialOutput:
    model: LDM
    privacy: dict  # the DP run's privacy record, or NOT_DP for a non-private reference
    history: list[dict]  # per epoch, from the plan only
    synthetic: ImageSet | None = None
    scores: dict = field(default_factory=dict)  # evaluate(): objective, synthetic/*, oracle/* (labelled)
    seconds: dict = field(default_factory=dict)
    adapter: tuple[dict, dict] | None = None  # method lora: the DP adapter, also merged into model
    warmup_means: torch.Tensor | None = None  # ft.warmup: the DP class means it released ([K, C, H, W] in [0, 1])


def run_pipeline(pretrained: str | Path | LDM, private: ImageSet, ft: FinetuneConfig, smp: SampleConfig | None = None,
                 ev: EvaluateConfig | None = None, *, validation: ImageSet | None = None, count=None, oracle: ImageSet | None = None,
                 device: str = "cpu", progress: bool = True,
                 on_epoch: Callable[[dict, FinetuneState], None] | None = None,
                 resume: FinetuneState | None = None) -> TrialOutput:
    """Loads the pretrained model, fine-tunes it (DP unless ft.non_private), samples when smp is given and
    scores when ev is given (on the DP validation set or by a noisy count on held-out records, and, as oracle metrics, on the real test split)."""
    seconds, t = {}, time.time()
    ft = ft.for_data(len(private))  # a sampling rate → its batch B (FinetuneConfig.for_data); unchanged when B is set
    model = pretrained if isinstance(pretrained, LDM) else load_ldm(pretrained, device)
    seconds["load"], t = time.time() - t, time.time()
    if ft.non_private:
        result, privacy = finetune_non_private(model, private, ft, progress=progress), NOT_DP
    else:
        result = dp_finetune(model, private, ft, progress=progress, on_epoch=on_epoch, resume=resume)
        privacy = result.privacy.to_dict()
    seconds["finetune"], t = time.time() - t, time.time()
    out = TrialOutput(result.model, privacy, result.history, seconds=seconds, adapter=result.adapter,
                      warmup_means=result.warmup_means)
    if smp is not None:
        out.synthetic = sample(result.model, smp, progress=progress)
        seconds["sample"], t = time.time() - t, time.time()
    if ev is not None and out.synthetic is not None:
        out.scores = evaluate(out.synthetic, oracle, ev, progress=progress, validation=validation, count=count)
        seconds["evaluate"] = time.time() - t
    return out


def write_outputs(d: Path, out: TrialOutput, result: dict, synthetic_npz: bool = False) -> None:
    """The one writer of a trial's directory: model/, lora/ (method lora: the adapter as diffusers LoRA weights;
    model/ has it merged), privacy.json, history.json, samples.png (when sampled), synthetic.npz (when asked) and
    result.json (what the caller releases about the trial)."""
    d = Path(d)
    save_ldm(out.model.to("cpu"), d / "model", extra={"privacy": out.privacy})
    if out.adapter is not None:
        save_lora(out.adapter, d / "lora")
    write_json(d / "privacy.json", out.privacy)
    write_json(d / "history.json", {"epochs": out.history})
    if out.warmup_means is not None:  # a DP output (privacy/class_means.py), accounted in privacy.json
        save_grid(means_as_images(out.warmup_means), d / "warmup_means.png")
    if out.synthetic is not None:
        save_grid(out.synthetic, d / "samples.png")
        if synthetic_npz:
            out.synthetic.save(d / "synthetic.npz")
    write_json(d / "result.json", result)


__all__ = ["TrialOutput", "run_pipeline", "write_outputs"]
