"""Per-layer rules of book-keeping clipping (privacy/bookkeeping.py): autograd Functions whose backward returns
the input gradient only and leaves on the slot's tape what that layer's per-sample gradient needs.

Written by hand because neither autograd nor Opacus offers a backward that skips the batch weight gradient.

Under autocast (precision "bf16", Tape) a Linear or 1×1 conv runs in the lower precision as autocast would run it,
and its tape entry (input, output gradient) stays in that dtype, half the memory; the slot upcasts both to float32
before any norm or sum. The affine and embedding rules record their per-sample gradients in float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class UnsupportedLayer(ValueError):
    """A trainable parameter sits in a layer this path has no per-sample rule for (use Opacus' hooks)."""


def upcast(t: torch.Tensor) -> torch.Tensor:
    """t in at least float32: a bfloat16/float16 tape entry before the norm math; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _autocast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """(x, weight, bias) in autocast's lower precision when autocast is on for x's device (what it does to
    F.linear and F.conv2d), else unchanged; the parameters themselves stay float32."""
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return x, weight, bias
    dt = torch.get_autocast_dtype(dev)
    return x.to(dt), weight.to(dt), None if bias is None else bias.to(dt)


class _LinearFn(torch.autograd.Function):
    """y = x Wᵀ + b whose backward returns dL/dx only and leaves (x, dL/dy) on the tape: no batch p.grad."""

    @staticmethod
    def forward(ctx, x, weight, bias, slot, scale_by_batch):
        x, weight, bias = _autocast(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.slot, ctx.scale_by_batch = slot, scale_by_batch
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        b = g.shape[0]
        ctx.slot.scale = b if ctx.scale_by_batch else 1
        ctx.slot.add(b, (x.reshape(b, -1, x.shape[-1]), g.reshape(b, -1, g.shape[-1])))
        gx = g @ weight.to(g.dtype) if ctx.needs_input_grad[0] else None
        return gx, None, None, None, None


class _Conv1x1Fn(torch.autograd.Function):
    """A 1×1, stride-1 convolution is a Linear over channels at every position: the same tape entry."""

    @staticmethod
    def forward(ctx, x, weight, bias, slot, scale_by_batch):
        x, weight, bias = _autocast(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.slot, ctx.scale_by_batch = slot, scale_by_batch
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        b, o = g.shape[:2]
        ctx.slot.scale = b if ctx.scale_by_batch else 1
        ctx.slot.add(b, (x.flatten(2).transpose(1, 2), g.flatten(2).transpose(1, 2)))
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.einsum("bohw,oi->bihw", g, weight.view(o, -1).to(g.dtype))
        return gx, None, None, None, None


class _AffineFn(torch.autograd.Function):
    """The affine part of LayerNorm (channels last) / GroupNorm (channels at dim 1), on the normalised input."""

    @staticmethod
    def forward(ctx, xhat, weight, bias, slot, scale_by_batch, channel_dim):
        shape = [1] * xhat.dim()
        shape[channel_dim] = -1
        ctx.save_for_backward(xhat, weight)
        ctx.slot, ctx.scale_by_batch, ctx.channel_dim = slot, scale_by_batch, channel_dim
        ctx.has_bias = bias is not None
        out = xhat * weight.view(shape)
        return out + bias.view(shape) if bias is not None else out

    @staticmethod
    def backward(ctx, g):
        xhat, weight = ctx.saved_tensors
        b, c = g.shape[0], weight.numel()
        s = b if ctx.scale_by_batch else 1
        gm, xm = (g.reshape(b, -1, c), xhat.reshape(b, -1, c)) if ctx.channel_dim == -1 else \
            (g.reshape(b, c, -1).transpose(1, 2), xhat.reshape(b, c, -1).transpose(1, 2))
        gm, xm = upcast(gm), upcast(xm)  # the per-sample gradient in float32 whatever autocast ran
        rec = {}
        if ctx.needs_input_grad[1]:
            rec["weight"] = s * (gm * xm).sum(1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            rec["bias"] = s * gm.sum(1)
        ctx.slot.add(b, rec)
        gx = None
        if ctx.needs_input_grad[0]:
            shape = [1] * g.dim()
            shape[ctx.channel_dim] = -1
            gx = g * weight.view(shape)
        return gx, None, None, None, None, None


class _EmbeddingFn(torch.autograd.Function):
    """An embedding lookup whose per-sample gradient ([B, rows, dim], small for a class table) is recorded."""

    @staticmethod
    def forward(ctx, idx, weight, slot, scale_by_batch):
        ctx.save_for_backward(idx)
        ctx.slot, ctx.scale_by_batch, ctx.rows = slot, scale_by_batch, weight.shape[0]
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        b, d = g.shape[0], g.shape[-1]
        s = b if ctx.scale_by_batch else 1
        g = upcast(g)
        per_sample = torch.zeros(b, ctx.rows, d, dtype=g.dtype, device=g.device)
        per_sample.scatter_add_(1, idx.reshape(b, -1, 1).expand(-1, -1, d), s * g.reshape(b, -1, d))
        ctx.slot.add(b, {"weight": per_sample})
        return None, None, None, None


def layer_kind(m: nn.Module) -> str:
    """Which rule below book-keeps this layer; UnsupportedLayer if none does."""
    if type(m) is nn.Linear or (isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward):
        return "linear"
    if isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward and m.kernel_size == (1, 1) \
            and m.stride == (1, 1) and m.padding in ((0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1 \
            and m.padding_mode == "zeros":
        return "conv1x1"
    if isinstance(m, nn.LayerNorm) and type(m).forward is nn.LayerNorm.forward and len(m.normalized_shape) == 1:
        return "layernorm"
    if isinstance(m, nn.GroupNorm) and type(m).forward is nn.GroupNorm.forward:
        return "groupnorm"
    if isinstance(m, nn.Embedding) and type(m).forward is nn.Embedding.forward and m.padding_idx is None \
            and m.max_norm is None and not m.scale_grad_by_freq and not m.sparse:
        return "embedding"
    raise UnsupportedLayer(type(m).__name__)


def layer_forward(slot, scale_by_batch: bool):
    """The forward installed on slot.module: the layer's own arithmetic through the Function above."""
    m = slot.module

    if slot.kind == "linear":
        def fwd(x):
            return _LinearFn.apply(x, m.weight, m.bias, slot, scale_by_batch)
    elif slot.kind == "conv1x1":
        def fwd(x):
            return _Conv1x1Fn.apply(x, m.weight, m.bias, slot, scale_by_batch)
    elif slot.kind == "layernorm":
        def fwd(x):
            xhat = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
            return _AffineFn.apply(xhat, m.weight, m.bias, slot, scale_by_batch, -1)
    elif slot.kind == "groupnorm":
        def fwd(x):
            xhat = F.group_norm(x, m.num_groups, None, None, m.eps)
            return _AffineFn.apply(xhat, m.weight, m.bias, slot, scale_by_batch, 1)
    else:
        def fwd(idx):
            return _EmbeddingFn.apply(idx, m.weight, slot, scale_by_batch)
    return fwd


__all__ = ["UnsupportedLayer", "layer_kind", "layer_forward", "upcast"]
