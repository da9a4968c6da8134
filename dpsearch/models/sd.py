"""Stable Diffusion-format pipelines (diffusers' `model_index.json` with `vae/`, `unet/`, `text_encoder/`,
`tokenizer/`, `scheduler/`) as dpsearch models, by a local path or a hub id.

Class labels become prompts from a template ("a photo of a {label}"). The text encoder is frozen, so each
class's prompt embedding (and the empty prompt's, for classifier-free guidance) is computed once, here, and
kept in a `PromptEmbedder` table: DP-SGD then touches only the UNet, and the converted model is an ordinary
dpsearch model directory (no text encoder needed to fine-tune, sample or score it). Prompts and label names
are public: they name the classes the release is conditioned on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from dpsearch.models.refs import META_FILE, ModelError, read_config

log = logging.getLogger(__name__)

SD_INDEX = "model_index.json"
DEFAULT_PROMPT = "{label}"


class PromptEmbedder(ModelMixin, ConfigMixin):
    """A fixed table of prompt embeddings, one row per class and the empty prompt last (`null_class`, the
    same convention as ClassEmbedder). It holds no parameters: nothing here is trained or noised."""

    @register_to_config
    def __init__(self, num_classes: int = 10, tokens: int = 77, dim: int = 768, prompts: tuple = ()):
        super().__init__()
        self.register_buffer("table", torch.zeros(num_classes + 1, tokens, dim))

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table[labels]


def is_sd_pipeline(ref: str | Path) -> bool:
    """A diffusers pipeline folder (or hub id) that is not a dpsearch model directory."""
    ref = str(ref)
    local = Path(ref).expanduser()
    if local.is_dir():
        return (local / SD_INDEX).is_file() and not (local / META_FILE).is_file()
    return read_config(ref, META_FILE) is None and read_config(ref, SD_INDEX) is not None


def _vae_scale(vae_config: dict) -> int:
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def sd_geometry(ref: str, resolution: int | None = None) -> tuple[int, int]:
    """(image size, channels) the pipeline is trained at: `resolution` or its UNet's native size, checked
    against the autoencoder's and the UNet's downsampling."""
    vae, unet = read_config(ref, "vae/config.json"), read_config(ref, "unet/config.json")
    if vae is None or unet is None:
        raise ModelError(f"{ref} has {SD_INDEX} but no vae/config.json or unet/config.json: not a Stable Diffusion "
                         f"pipeline dpsearch can fine-tune")
    scale = _vae_scale(vae)
    size = resolution or unet["sample_size"] * scale
    multiple = scale * 2 ** (len(unet["block_out_channels"]) - 1)
    if size % multiple:
        raise ModelError(f"resolution {size} is not a multiple of {multiple} (the autoencoder's ×{scale} and the "
                         f"UNet's downsampling); use e.g. {max(multiple, size // multiple * multiple)}")
    return size, vae.get("in_channels", 3)


def prompts_for(template: str, names: tuple[str, ...]) -> list[str]:
    if "{label}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{label}}: every class would get the same prompt "
                         f"(e.g. 'a photo of a {{label}}')")
    return [template.replace("{label}", n) for n in names]


@torch.no_grad()
def _embed(text_encoder, tokenizer, prompts: list[str], device) -> torch.Tensor:
    """What StableDiffusionPipeline.encode_prompt computes (the last hidden state, padded to the tokenizer's
    length), for every prompt at once; the last row is the empty prompt."""
    ids = tokenizer(list(prompts) + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder.to(device).eval()(ids.to(device))[0].float().cpu()


def import_sd(ref: str, class_names: tuple[str, ...], template: str = DEFAULT_PROMPT, resolution: int | None = None,
              device: str | torch.device = "cpu"):
    """An SD-format pipeline as an LDM whose conditioning is the table of its classes' prompt embeddings."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from dpsearch.models.ldm import LDM

    size, channels = sd_geometry(ref, resolution)
    prompts = prompts_for(template, class_names)
    try:
        vae = AutoencoderKL.from_pretrained(ref, subfolder="vae", low_cpu_mem_usage=False)
        unet = UNet2DConditionModel.from_pretrained(ref, subfolder="unet", low_cpu_mem_usage=False)
        tokenizer = CLIPTokenizer.from_pretrained(ref, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(ref, subfolder="text_encoder")
        scheduler = DDPMScheduler.from_pretrained(ref, subfolder="scheduler")
    except Exception as e:  # noqa: BLE001 - safetensors/json/OSError all mean "this pipeline is unusable"
        raise ModelError(f"Stable Diffusion pipeline {ref} could not be loaded ({type(e).__name__}: {str(e)[:300]})") from e
    if scheduler.config.prediction_type != "epsilon":
        raise ModelError(f"{ref} predicts {scheduler.config.prediction_type!r}; dpsearch trains and samples "
                         f"ε-prediction models (SD 1.x, SD 2.x base at 512 px)")
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise ModelError(f"{ref}: the text encoder's width {text_encoder.config.hidden_size} is not the UNet's "
                         f"cross-attention width {unet.config.cross_attention_dim}")
    scheduler = DDPMScheduler.from_config(scheduler.config, clip_sample=False)  # latents are not bounded to [-1, 1]
    table = _embed(text_encoder, tokenizer, prompts, device)
    embedder = PromptEmbedder(num_classes=len(prompts), tokens=table.shape[1], dim=table.shape[2], prompts=tuple(prompts))
    embedder.table.copy_(table)
    meta = {"image_size": size, "channels": channels, "num_classes": len(prompts), "padded_size": size, "format": 1,
            "family": "stable-diffusion", "source": str(ref), "prompt_template": template, "prompts": prompts,
            "class_names": list(class_names)}
    return LDM(vae, unet, embedder, scheduler, meta).to(device)


def load_sd_unet(ref: str):
    """The UNet alone (for the layer table): no prompts needed."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(ref, subfolder="unet", low_cpu_mem_usage=False)


def _source_stamp(ref: str) -> str:
    """What identifies the pipeline's weights: a local folder's file sizes and times, or the hub id."""
    local = Path(ref).expanduser()
    if not local.is_dir():
        return ref
    files = sorted(p for p in local.rglob("*") if p.is_file())
    return json.dumps([(str(p.relative_to(local)), p.stat().st_size, int(p.stat().st_mtime)) for p in files])


def prepare_model(ref: str | Path, class_names: tuple[str, ...], template: str = DEFAULT_PROMPT,
                  resolution: int | None = None) -> str:
    """`ref` itself for a dpsearch model; for an SD pipeline, its conversion (prompts embedded once), cached
    under DPSEARCH_HOME/models/sd/ by source, prompts and resolution, so a sweep converts once."""
    from dpsearch.models.ldm import save_ldm
    from dpsearch.outputs import atomic_dir
    from dpsearch.paths import home

    ref = str(ref)
    if not is_sd_pipeline(ref):
        return ref
    prompts = prompts_for(template, class_names)
    key = hashlib.sha256(json.dumps([str(Path(ref).expanduser().resolve()) if Path(ref).expanduser().is_dir() else ref,
                                     _source_stamp(ref), prompts, sd_geometry(ref, resolution)]).encode()).hexdigest()
    out = home() / "models" / "sd" / key[:16]
    if not (out / META_FILE).exists():
        log.info("converting Stable Diffusion pipeline %s (%d prompts, e.g. %r) into %s", ref, len(prompts), prompts[0], out)
        model = import_sd(ref, class_names, template, resolution)
        with atomic_dir(out, overwrite=True) as tmp:
            save_ldm(model, tmp)
    return str(out)


__all__ = ["PromptEmbedder", "SD_INDEX", "DEFAULT_PROMPT", "is_sd_pipeline", "sd_geometry", "import_sd",
           "load_sd_unet", "prepare_model", "prompts_for"]
