"""The model and the private data of a run, made to fit each other before anything trains.

The data is read at the model's resolution and channels; a Stable Diffusion pipeline is converted once, with
its class prompts built from the data's label names (models/sd.py). `dpsearch run`, `finetune` and `sweep`
all start here.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpsearch.config import ConfigError, PretrainConfig
from dpsearch.data import ImageSet, load_dataset
from dpsearch.models.ldm import model_geometry
from dpsearch.models.sd import DEFAULT_PROMPT, prepare_model


@dataclass
class Inputs:
    model: str  # a dpsearch model directory or hub id (an SD pipeline's conversion)
    private: ImageSet
    test: ImageSet | None  # the source's real test split: oracle metrics only


def resolve_inputs(model: str | None, private: str, prompt: str | None = None, resolution: int | None = None,
                   device: str = "cpu") -> Inputs:
    """model None: the default pretrained model (shipped; trained on public data if its config changed)."""
    if model is None:
        from dpsearch.pretrain import pretrain

        if resolution is not None:
            raise ConfigError("--resolution applies to a Stable Diffusion --model, not the default model")
        model = str(pretrain(PretrainConfig(), device=device))
    size, channels, classes = model_geometry(model, resolution)
    if classes is not None and resolution not in (None, size):
        raise ConfigError(f"--resolution {resolution}: the model {model} works at {size} × {size} only (a resolution "
                          f"applies to Stable Diffusion pipelines)")
    train, test = load_dataset(private, size, channels)
    if classes is not None and classes != train.num_classes:
        raise ConfigError(f"the model {model} is conditioned on {classes} classes but {private} has "
                          f"{train.num_classes}; give a model pretrained for these classes or a Stable Diffusion "
                          f"pipeline (prompts from the label names)")
    try:
        model = prepare_model(model, train.label_names, prompt or DEFAULT_PROMPT, resolution)
    except ValueError as e:  # a prompt template without {label}
        raise ConfigError(str(e)) from None
    return Inputs(str(model), train, test)
