"""Book-keeping clipping: per-sample gradient norms and the clipped sum from one backward pass.

Why by hand: Opacus' hooks mode materialises every trainable layer's per-sample gradients in Python
backward hooks while autograd still computes the batch gradient `p.grad` that Opacus throws away, and
its ghost mode pays a second backward pass (docs/performance.md). Book-keeping (Bu, Wang, Zha, Karypis,
ICML 2023, arXiv 2210.00038) keeps each trainable layer's input and output gradient from the single
backward pass, takes per-sample norms from them (the "ghost norm" Σ_tt' (a_t·a_t')(g_t·g_t'), or the
per-sample gradient itself when that is smaller) and forms the clipped sum as one matrix product. Opacus
has no such path, so the backward of the layer types a trainable attention set holds (Linear, 1×1
Conv2d, LayerNorm, GroupNorm, Embedding) is written here. Everything else is Opacus': the DPOptimizer
adds the noise, scales by the expected batch, skips the partial steps of BatchMemoryManager and calls
the accountant; only `clip_and_accumulate` reads this module's tape instead of `p.grad_sample`.

Precision "bf16" (opt-in, FinetuneConfig.precision) runs the root's forward under torch.autocast in bfloat16, so the
UNet's matmuls and convolutions and their backward run in bfloat16 and a linear layer's tape entry is kept in
bfloat16. Everything the clipping bound rests on is float32: the entries are upcast before the per-sample norms,
the norms, their sum over layers and the clip factors are float32, and the clipped sum is formed in float32 from the
same upcast entries, so each example's clipped contribution has norm ≤ C as in float32 mode. Opacus then adds the
noise to that float32 sum. The parameters, their gradients and the optimizer stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from opacus.optimizers import DPOptimizer

from dpsearch.device import PRECISIONS, autocast
from dpsearch.privacy.bookkeeping_layers import UnsupportedLayer, layer_forward, layer_kind, upcast


# --------------------------------------------------------------------------------------------------------------
# What a layer leaves on the tape during backward. `scale` turns the gradient of the mean loss over the
# physical batch into each example's own gradient (× batch size), as Opacus does for loss_reduction="mean";
# a linear layer's records stay unscaled and the scale multiplies only [B]-vectors (norms, clip factors).


@dataclass
class _Slot:
    """One trainable layer: its parameters and the records its backward left since the last step."""

    name: str
    module: nn.Module
    kind: str
    ghost: str  # "auto" | "always" | "never": how a linear layer's per-sample norm is computed
    tape: "Tape" = field(repr=False)
    records: list = field(default_factory=list)
    scale: float = 1.0
    _cache: dict | None = field(default=None, repr=False)  # per-sample gradients, when instantiated

    def params(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters(recurse=False) if p.requires_grad}

    # ---- per-sample norms ------------------------------------------------------------------------------------
    def norms2(self) -> torch.Tensor:
        """Squared per-sample gradient norm over this layer's trainable parameters, shape [B]."""
        if self.kind in ("linear", "conv1x1"):
            return self._linear_norms2()
        total = 0
        for per_sample in self._materialised().values():
            total = total + per_sample.flatten(1).pow(2).sum(1)
        return total

    def _use_ghost(self, x: torch.Tensor, g: torch.Tensor) -> bool:
        if self.ghost != "auto":
            return self.ghost == "always"
        t, i, o = x.shape[1], x.shape[2], g.shape[2]
        return 2 * t * t < i * o  # the paper's rule: the T×T Gram matrices are smaller than an O×I gradient

    def _linear_norms2(self) -> torch.Tensor:
        weight = self.module.weight.requires_grad
        bias = self.module.bias is not None and self.module.bias.requires_grad
        if len(self.records) == 1 and self._use_ghost(*self.records[0]):
            x, g = map(upcast, self.records[0])
            out = 0
            if weight:
                out = (torch.bmm(x, x.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
            if bias:
                out = out + g.sum(1).pow(2).sum(1)
            return out * self.scale ** 2
        # A layer used more than once per example, or one whose Gram matrices would be larger: instantiate.
        out = 0
        for per_sample in self._materialised().values():
            out = out + per_sample.flatten(1).pow(2).sum(1)
        return out * self.scale ** 2

    def _materialised(self) -> dict[str, torch.Tensor]:
        """Per-sample gradients of the trainable parameters, [B, *p.shape] each (computed once, kept); a
        linear layer's are unscaled (see `scale`)."""
        if self._cache is not None:
            return self._cache
        out: dict[str, torch.Tensor] = {}
        if self.kind in ("linear", "conv1x1"):
            w = self.module.weight
            if w.requires_grad:
                out["weight"] = sum(torch.bmm(upcast(g).transpose(1, 2), upcast(x))
                                    for x, g in self.records).view(-1, *w.shape)
            if self.module.bias is not None and self.module.bias.requires_grad:
                out["bias"] = sum(upcast(g).sum(1) for _, g in self.records)
        else:  # norms and embeddings record their (small) per-sample gradients directly
            for rec in self.records:
                for name, per_sample in rec.items():
                    out[name] = per_sample if name not in out else out[name] + per_sample
        self._cache = out
        return out

    # ---- the clipped sum -------------------------------------------------------------------------------------
    def clipped_sum(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σ_i c_i · (example i's gradient) for each trainable parameter, shaped like the parameter."""
        params = self.params()
        if self.kind in ("linear", "conv1x1") and self._cache is None:
            # Ghost branch: the clipped sum is one product over the batch and positions, never per example.
            out, c = {}, c * self.scale
            for x, g in self.records:
                x, g = upcast(x), upcast(g)
                gc = g * c.view(-1, 1, 1)
                for name in params:
                    part = gc.flatten(0, 1).T @ x.flatten(0, 1) if name == "weight" else gc.sum((0, 1))
                    out[name] = part if name not in out else out[name] + part
            return {name: total.view_as(params[name]) for name, total in out.items()}
        if self.kind in ("linear", "conv1x1"):
            c = c * self.scale
        return {name: torch.einsum("b,b...->...", c, per_sample).view_as(params[name])
                for name, per_sample in self._materialised().items()}

    def add(self, batch: int, record) -> None:
        # Every record must hold the whole physical batch, one row per example: a layer run on chunks of the
        # batch (e.g. diffusers' chunked feed-forward) would otherwise be summed as if used twice per example.
        b, k = self.tape.batch, self.tape.draws
        if k > 1 and batch == b * k:
            record = self._grouped(record, b, k)
        elif batch != b or k > 1:  # with k draws every trainable layer must see all B·k rows (a B-row chunk would mix images)
            raise RuntimeError(f"layer {self.name} saw a batch of {batch} in a pass over {b} examples"
                               f"{f' × {k} draws' if k > 1 else ''}; book-keeping needs each trainable layer to see "
                               f"the whole batch")
        self.records.append(record)

    def _grouped(self, record, b: int, k: int):
        """The k adjacent rows of one example (DiffusionLoss with draws = k) folded into that example, exactly:
        a linear layer's gradient Σ_t g_t a_tᵀ over k·T positions is the sum over the draws, so the rows become
        positions ([B·k, T, d] → [B, k·T, d]); a recorded per-sample gradient is summed over its draws. The
        layer's Function scaled by B·k rows; the example's gradient is the mean over draws, i.e. scale B."""
        if isinstance(record, tuple):
            self.scale = b if self.scale != 1 else 1
            return tuple(r.reshape(b, -1, r.shape[-1]) for r in record)
        return {name: v.view(b, k, *v.shape[1:]).sum(1) / k for name, v in record.items()}

    def clear(self) -> None:
        self.records.clear()
        self._cache = None
        self.scale = 1.0


class Tape:
    """Installs the book-keeping forward on every layer of `root` that holds a trainable parameter, and a
    guard on `root`'s forward: one grad-enabled pass over one batch until the tape is consumed or cleared.
    With draws = k, a layer may see each example as k adjacent rows; they are folded back into it.

    Raises UnsupportedLayer (naming the layers) if any such layer has no rule here, shares a parameter with
    another layer, or already has a replaced forward; nothing is changed then. `remove()` restores them all.
    precision "bf16": root's forward runs under autocast in bfloat16, the norm and clipping math in float32.
    """

    def __init__(self, root: nn.Module, scale_by_batch: bool = True, ghost: str = "auto", draws: int = 1,
                 precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        slots, bad, seen = [], [], {}
        self.draws = draws  # rows per example inside the model (DiffusionLoss's noise multiplicity)
        for name, m in root.named_modules(remove_duplicate=False):
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            label = name or "<root>"
            try:
                if "forward" in m.__dict__:
                    raise UnsupportedLayer(f"{type(m).__name__} with a replaced forward")
                if any(id(p) in seen for p in own):  # the same layer twice, or a parameter tied across layers
                    raise UnsupportedLayer(f"parameter shared with {seen[next(id(p) for p in own if id(p) in seen)]}")
                slots.append(_Slot(label, m, layer_kind(m), ghost, self))
                seen.update({id(p): label for p in own})
            except UnsupportedLayer as e:
                bad.append(f"{label} ({e})")
        if "forward" in root.__dict__:
            bad.append("<root> (a replaced forward: another tape installed?)")
        if bad:
            raise UnsupportedLayer(f"book-keeping clipping has no per-sample rule for trainable layer(s) "
                                   f"{', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}; use clipping 'hooks'")
        self.slots = slots
        self.batch: int | None = None  # the batch of the pass whose records are on the tape
        self._saved = []  # (module, its own instance forward or None), restored in reverse order
        for slot in slots:
            self._saved.append((slot.module, None))
            slot.module.forward = layer_forward(slot, scale_by_batch)
        self._saved.append((root, root.__dict__.get("forward")))
        root.forward = self._guard(root.forward)

    def _guard(self, forward):
        def guarded(*args, **kwargs):
            first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if torch.is_grad_enabled():
                if self.batch is not None:
                    raise RuntimeError("a second forward pass while per-sample gradients are pending on the tape: "
                                       "call optimizer.step() (or zero_grad()) after every backward pass")
                if first is None:
                    raise RuntimeError("book-keeping needs the batch as a tensor argument of the model's forward")
                self.batch = first.shape[0]
            with autocast(self.precision, first.device if first is not None else "cpu"):
                return forward(*args, **kwargs)
        return guarded

    def has_records(self) -> bool:
        return any(s.records for s in self.slots)

    def per_sample_norms(self) -> torch.Tensor:
        """‖example i's gradient over all trainable parameters‖, shape [B], float32 whatever the precision."""
        # A ghost norm is a sum of products and may round a hair below zero.
        return torch.sqrt(sum(s.norms2() for s in self.slots if s.records).clamp_min(0))

    @torch.no_grad()  # Opacus calls this outside no_grad; the records hold activations that require grad, and a graph
    # built here would keep every physical batch's records alive until the logical step ends
    def clip_and_sum(self, params: list[nn.Parameter], max_norm: float) -> list[torch.Tensor]:
        """Opacus' flat clipping (factor min(1, C / (‖g_i‖ + 1e-6))) summed over the batch, one tensor per param."""
        # float32 whatever autocast region a caller steps in: the bound ‖clipped g_i‖ ≤ C rests on it
        with torch.autocast(params[0].device.type if params else "cpu", enabled=False):
            norms = self.per_sample_norms()
            c = (max_norm / (norms + 1e-6)).clamp(max=1.0)
            sums: dict[int, torch.Tensor] = {}
            for slot in self.slots:
                if slot.records:
                    for name, total in slot.clipped_sum(c).items():
                        sums[id(slot.module._parameters[name])] = total
        missing = [i for i, p in enumerate(params) if id(p) not in sums]
        if missing:
            raise RuntimeError(f"{len(missing)} trainable parameter(s) got no per-sample gradient in this backward "
                               f"pass (not reached by the loss, or not book-kept); refusing to step")
        return [sums[id(p)] for p in params]

    def clear(self) -> None:
        for s in self.slots:
            s.clear()
        self.batch = None

    def remove(self) -> None:
        for module, own in reversed(self._saved):
            module.__dict__.pop("forward", None)
            if own is not None:
                module.forward = own
        self._saved = []
        self.clear()


class BookkeepingDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer whose clipped sum comes from the tape. Noise, scaling, skipped partial steps and
    the accountant hook are inherited unchanged. An empty Poisson batch (no backward, zero `p.grad_sample`
    set by the caller) goes through Opacus' own clipping, as before."""

    tape: Tape

    @classmethod
    def adopt(cls, optimizer: DPOptimizer, tape: Tape) -> "BookkeepingDPOptimizer":
        # make_private built and wired `optimizer` (expected batch, noise generator, accountant hook); only
        # the clipping differs, so the instance is re-classed rather than rebuilt by hand.
        if type(optimizer) is not DPOptimizer:
            raise TypeError(f"book-keeping clipping supports Opacus' flat DPOptimizer, got {type(optimizer).__name__}")
        optimizer.__class__ = cls
        optimizer.tape = tape
        return optimizer

    def _on_tape(self) -> bool:
        return self.tape.has_records()

    @property
    def grad_samples(self):
        # pre_step asks only whether there are parameters to clip; on the tape there are no per-sample tensors.
        return [p for p in self.params] if self._on_tape() else super().grad_samples

    @property
    def accumulated_iterations(self) -> int:
        # Read by scale_grad and the accountant hook after the tape is consumed: one backward per physical
        # batch (the tape refuses a second before the step), unless Opacus' own per-sample tensors are set.
        if all(getattr(p, "grad_sample", None) is None for p in self.params):
            return 1
        return super().accumulated_iterations

    def clip_and_accumulate(self):
        if not self._on_tape():
            return super().clip_and_accumulate()
        stray = [p.grad.abs().max() for p in self.params if p.grad is not None]
        if stray and torch.stack(stray).max() > 0:  # one device sync, not one per parameter
            # A weight used outside its layer's forward gets an ordinary, unclipped gradient: refuse it.
            raise RuntimeError("a trainable parameter has an ordinary gradient next to the book-keeping tape "
                               "(used outside its layer's forward?); use clipping 'hooks'")
        for p, total in zip(self.params, self.tape.clip_and_sum(self.params, self.max_grad_norm)):
            total = total.to(p.dtype)
            if p.summed_grad is None:
                p.summed_grad = total
            else:
                p.summed_grad += total  # in place, as Opacus: keeps its flag against releasing a sum twice
        self.tape.clear()

    def zero_grad(self, set_to_none: bool = False):
        super().zero_grad(set_to_none)
        self.tape.clear()


__all__ = ["Tape", "BookkeepingDPOptimizer", "UnsupportedLayer"]
