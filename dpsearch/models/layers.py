"""Attention-layer numbering: the `a-b` range (docs/design.md).

Modules are the UNet's Transformer2DModel blocks numbered 1..L down blocks → mid block → up
blocks. `named_modules()` is not used for the order: UNet2DConditionModel registers
`up_blocks` before `mid_block`, which would number the mid block last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from diffusers import UNet2DConditionModel
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from dpsearch.config import parse_layers


@dataclass(frozen=True)
class AttentionModule:
    index: int  # 1-based
    name: str  # dotted path inside the UNet
    module: nn.Module
    params: int


def attention_modules(unet: UNet2DConditionModel) -> list[AttentionModule]:
    groups = [("down_blocks", unet.down_blocks), ("mid_block", unet.mid_block), ("up_blocks", unet.up_blocks)]
    found = []
    for prefix, block in groups:
        if block is None:
            continue
        for name, m in block.named_modules():
            if isinstance(m, Transformer2DModel):
                found.append((f"{prefix}.{name}", m))
    return [AttentionModule(i + 1, n, m, sum(p.numel() for p in m.parameters())) for i, (n, m) in enumerate(found)]


def select_attention_layers(unet: UNet2DConditionModel, embedder: nn.Module, layers: str | tuple[int, int] | None,
                            frozen: tuple[nn.Module, ...] = ()) -> list[nn.Parameter]:
    """Freezes everything, then unfreezes attention modules a..b and the conditioning embedder.

    Must run before Opacus wraps the model, so that only these get per-sample gradients and noise.
    Returns the trainable parameters.
    """
    mods = attention_modules(unet)
    a, b = parse_layers(layers, len(mods))
    for m in (unet, embedder, *frozen):
        m.requires_grad_(False)
    for am in mods[a - 1: b]:
        am.module.requires_grad_(True)
    embedder.requires_grad_(True)
    return [p for m in (unet, embedder) for p in m.parameters() if p.requires_grad]


def layer_table(unet: UNet2DConditionModel, embedder: nn.Module | None = None, layers: str | None = None,
                ranks: tuple[int, ...] = (4, 16)) -> str:
    """The numbered table `dpsearch layers MODEL` prints, with what a range trains: whole modules, or LoRA
    adapters of the given ranks on their projections."""
    from dpsearch.models.lora import lora_params

    mods = attention_modules(unet)
    emb = sum(p.numel() for p in embedder.parameters()) if embedder is not None else 0
    total = sum(p.numel() for p in unet.parameters()) + emb
    lines = [f"{'#':>3}  {'module':<45} {'params':>12} {'% of model':>10}"]
    for m in mods:
        lines.append(f"{m.index:>3}  {m.name:<45} {m.params:>12,} {100 * m.params / total:>9.2f}%")
    if emb:
        lines.append(f"{'emb':>3}  {'class_embedder (always trained)':<45} {emb:>12,} {100 * emb / total:>9.2f}%")
    else:
        lines.append(f"{'':>3}  {'conditioning: class prompts embedded once by the frozen text encoder (not trained)'}")
    lines.append(f"L = {len(mods)} attention modules; UNet{' + embedder' if emb else ''} = {total:,} parameters "
                 f"(autoencoder excluded: it is never fine-tuned)")
    ranges = [layers] if layers else ["all", f"1-{len(mods) // 2}", f"{len(mods) // 2 + 1}-{len(mods)}"]
    for r in ranges:
        a, b = parse_layers(r, len(mods))
        n = sum(m.params for m in mods[a - 1: b]) + emb
        lora = ", ".join(f"LoRA r={k}: {lora_params(unet, a, b, k) + emb:,}" for k in ranks)
        lines.append(f"range {a}-{b}: {n:,} trainable ({100 * n / total:.2f}%); {lora}")
    return "\n".join(lines)
