"""Build, save and load the class-conditional LDM in diffusers format.

A model directory holds `vae/`, `unet/`, `class_embedder/`, `scheduler/` (each a diffusers
`save_pretrained` folder) and `dpsearch_model.json` (image size, channels, classes). The same
loader takes a local directory or, where there is internet, a Hugging Face hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from dpsearch.config import ModelConfig
from dpsearch.models.refs import META_FILE, ModelError, is_local, model_root, read_config
from dpsearch.models.sd import PromptEmbedder

PARTS = ("vae", "unet", "class_embedder", "scheduler")


class ClassEmbedder(ModelMixin, ConfigMixin):
    """The conditioning embedder: a class id becomes the one token the UNet's cross-attention reads.

    Index `num_classes` is the null class used for classifier-free guidance. Text conditioning
    would put a text encoder's projection here; the UNet sees the same [B, tokens, dim] input.
    """

    @register_to_config
    def __init__(self, num_classes: int = 10, dim: int = 128):
        super().__init__()
        self.embedding = nn.Embedding(num_classes + 1, dim)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels).unsqueeze(1)


@dataclass
class LDM:
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    embedder: ClassEmbedder | PromptEmbedder
    scheduler: DDPMScheduler
    meta: dict

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> "LDM":
        for m in (self.vae, self.unet, self.embedder):
            m.to(device)
        return self

    @property
    def latent_size(self) -> int:
        """The UNet's input size at this model's resolution (an SD UNet's config names its native one only)."""
        return self.meta["padded_size"] // 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _pad(self) -> int:
        return (self.meta["padded_size"] - self.meta["image_size"]) // 2

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """Images in [-1, 1] → scaled latents (posterior mean: deterministic per image)."""
        p, out = self._pad(), []
        for i in range(0, len(images), batch):
            x = F.pad(images[i: i + batch].to(self.device), (p, p, p, p), value=-1.0)
            out.append(self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        p, s = self._pad(), self.meta["image_size"]
        return x[:, :, p: p + s, p: p + s].clamp(-1, 1)


def build_ldm(cfg: ModelConfig = ModelConfig()) -> LDM:
    n_levels = len(cfg.ae_channels)
    vae = AutoencoderKL(
        in_channels=cfg.channels, out_channels=cfg.channels,
        down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
        block_out_channels=cfg.ae_channels, layers_per_block=1, latent_channels=cfg.latent_channels,
        norm_num_groups=min(16, min(cfg.ae_channels)), sample_size=cfg.padded_size, mid_block_add_attention=False,
    )
    latent_size = cfg.padded_size // 2 ** (n_levels - 1)
    n = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        layers_per_block=cfg.layers_per_block, block_out_channels=cfg.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_heads,
        norm_num_groups=min(32, min(cfg.unet_channels)),
    )
    embedder = ClassEmbedder(num_classes=cfg.num_classes, dim=cfg.cross_attention_dim)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False)  # latents are not bounded to [-1, 1]: clipping x0 ruins samples
    meta = {"image_size": cfg.image_size, "channels": cfg.channels, "num_classes": cfg.num_classes,
            "padded_size": cfg.padded_size, "format": 1}
    return LDM(vae, unet, embedder, scheduler, meta)


def save_ldm(model: LDM, path: Path, extra: dict | None = None) -> None:
    """Writes into `path` (callers write to a temporary directory and move it into place)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.vae.save_pretrained(path / "vae")
    model.unet.save_pretrained(path / "unet")
    model.embedder.save_pretrained(path / "class_embedder")
    model.scheduler.save_pretrained(path / "scheduler")
    (path / META_FILE).write_text(json.dumps({**model.meta, **(extra or {})}, indent=2))


def model_geometry(ref: str | Path, resolution: int | None = None) -> tuple[int, int, int | None]:
    """(image size, channels, classes or None) of a dpsearch model or an SD pipeline, from its configs alone:
    what the private data is converted to before anything loads weights."""
    from dpsearch.models.sd import is_sd_pipeline, sd_geometry

    ref = str(ref)
    if is_sd_pipeline(ref):
        return (*sd_geometry(ref, resolution), None)
    if is_local(ref):
        ref = str(model_root(ref))
    meta = read_config(ref, META_FILE)
    if meta is None:
        raise ModelError(f"{ref} is neither a dpsearch model ({META_FILE}) nor a Stable Diffusion pipeline "
                         f"(model_index.json); run `dpsearch pretrain` or give a model directory or hub id")
    return meta["image_size"], meta["channels"], meta["num_classes"]


def load_ldm(ref: str | Path, device: str | torch.device = "cpu") -> LDM:
    """Loads a local model directory (or a trial directory holding model/), or a hub id `owner/name` where there
    is internet."""
    ref = str(ref)
    local = is_local(ref)
    if local:
        root = model_root(ref)
        if not root.is_dir():
            raise ModelError(f"model directory {root} does not exist; run `dpsearch pretrain` or give a path or hub id")
        if (root / "model_index.json").exists() and not (root / META_FILE).exists():
            raise ModelError(f"{root} is a Stable Diffusion-format pipeline: give it as --model to `dpsearch run`, "
                             f"`finetune` or `sweep`, which embed the dataset's class prompts once (models/sd.py)")
        missing = [p for p in (*PARTS, META_FILE) if not (root / p).exists()]
        if missing:
            raise ModelError(f"model directory {root} is incomplete (missing {', '.join(missing)}); "
                             f"it was not written by dpsearch or was cut short. Recreate it.")
        meta = json.loads((root / META_FILE).read_text())
        src = str(root)
    else:
        from huggingface_hub import hf_hub_download

        meta = json.loads(Path(hf_hub_download(ref, META_FILE)).read_text())
        src = ref
    try:
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", low_cpu_mem_usage=False)
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", low_cpu_mem_usage=False)
        kind = ClassEmbedder.load_config(src, subfolder="class_embedder").get("_class_name")
        embedder_cls = PromptEmbedder if kind == "PromptEmbedder" else ClassEmbedder  # an SD model's prompt table
        embedder = embedder_cls.from_pretrained(src, subfolder="class_embedder", low_cpu_mem_usage=False)
        scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler")
    except Exception as e:  # noqa: BLE001 - safetensors/json/OSError all mean "this model is unusable"
        raise ModelError(f"model {ref} could not be loaded ({type(e).__name__}: {str(e)[:300]}); "
                         f"the files are corrupt or from another program. Recreate it with `dpsearch pretrain`.") from e
    return LDM(vae, unet, embedder, scheduler, meta).to(device)
