"""LoRA adapters on the attention projections of modules a..b, through diffusers' peft integration.

The adapters are the only UNet weights that train: `unet.add_adapter` freezes everything else, so it runs
before the optimizer is built and before Opacus or the book-keeping tape wraps the model. peft's `lora_A` and
`lora_B` are plain `nn.Linear`s called once per forward, which both per-sample clipping paths handle.
"""

from __future__ import annotations

from pathlib import Path

from dpsearch.models.layers import attention_modules

ADAPTER = "default"
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name: `pipe.load_lora_weights(dir)` finds it
# Every attention projection: self-attention (attn1) and cross-attention (attn2); to_out is ModuleList([Linear, Dropout]).
PROJECTIONS = tuple(f"attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0"))


def lora_targets(unet, a: int, b: int) -> list[str]:
    """Full module names of the projections inside attention modules a..b (1-based, inclusive).

    Full names, not suffixes like "to_q": peft would otherwise adapt every module of the UNet with that name.
    """
    targets = []
    for am in attention_modules(unet)[a - 1: b]:
        targets += [f"{am.name}.{n}" for n, _ in am.module.named_modules() if n.endswith(PROJECTIONS)]
    return targets


def lora_params(unet, a: int, b: int, rank: int) -> int:
    """Adapter parameters of rank `rank` on modules a..b, r·(in + out) per projection, without injecting them."""
    mods = dict(unet.named_modules())
    return sum(rank * (mods[t].in_features + mods[t].out_features) for t in lora_targets(unet, a, b))


def add_lora(unet, a: int, b: int, rank: int) -> list:
    """Injects rank-`rank` adapters (α = r: scale 1; A Gaussian, B zero, so the model starts unchanged) on modules
    a..b and returns the adapter parameters. Call after the UNet is on its device (opacus#820: moving it after
    the optimizer captured the parameters leaves the adapters silently untrained)."""
    from peft import LoraConfig

    targets = lora_targets(unet, a, b)
    if not targets:
        raise ValueError(f"attention modules {a}-{b} have no q/k/v/out projections to adapt")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", lora_dropout=0.0,
                                target_modules=targets), adapter_name=ADAPTER)
    return [p for n, p in unet.named_parameters() if "lora_" in n and p.requires_grad]


def has_lora(unet) -> bool:
    return bool(getattr(unet, "peft_config", None))


def lora_adapter(unet) -> tuple[dict, dict]:
    """(weights in diffusers' key format, config): a copy that outlives `merge_lora`."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    weights = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER))
    return {k: v.detach().cpu().clone() for k, v in weights.items()}, unet.peft_config[ADAPTER].to_dict()


def save_lora(adapter: tuple[dict, dict], directory: Path) -> Path:
    """Writes an adapter as diffusers LoRA weights, with its config (rank, α, targets) as metadata: α ≠ r would
    otherwise load at the wrong scale."""
    from diffusers import StableDiffusionPipeline

    weights, config = adapter
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(directory, unet_lora_layers=weights, safe_serialization=True,
                                              unet_lora_adapter_metadata=config)
    return directory / LORA_FILE


def load_lora(unet, directory: Path) -> None:
    """Loads adapters written by save_lora into `unet` (un-merged: `merge_lora` folds them in)."""
    unet.load_lora_adapter(str(directory), weight_name=LORA_FILE, prefix="unet", adapter_name=ADAPTER)


def merge_lora(unet) -> None:
    """Folds the adapters into the base weights (W += B·A·α/r) and removes them: a plain diffusers UNet again,
    saved and sampled like any other. Post-processing of the DP weights: no privacy cost."""
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
