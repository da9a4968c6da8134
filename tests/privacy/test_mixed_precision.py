"""Precision "bf16": the forward and backward under bfloat16 autocast, the clipping bound still exact.

The reference is each example's gradient rebuilt in float64 by this file from the tape's own records (the values the
bfloat16 pass produced), so "exact" means: the norms the tape clips by are those of the gradients it sums.
"""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dpsearch.config import ConfigError, FinetuneConfig, validate
from dpsearch.privacy import bookkeeping
from dpsearch.privacy.bookkeeping import Tape
from dpsearch.privacy.dpsgd import privatize
from tests.privacy.test_bookkeeping import _close
from tests.test_finetune import _setup


def _per_sample_from_records(tape: Tape, trainable) -> torch.Tensor:
    """[B, trainable parameters] in float64: each example's gradient, from the records on the tape."""
    by_param = {}
    for s in tape.slots:
        if not s.records:
            continue
        parts = {}
        if s.kind in ("linear", "conv1x1"):
            if s.module.weight.requires_grad:
                parts["weight"] = s.scale * sum(torch.einsum("bto,bti->boi", g.double(), x.double()) for x, g in s.records)
            if s.module.bias is not None and s.module.bias.requires_grad:
                parts["bias"] = s.scale * sum(g.double().sum(1) for _, g in s.records)
        else:
            for rec in s.records:
                for name, v in rec.items():
                    parts[name] = parts.get(name, 0) + v.double()
        for name, v in parts.items():
            by_param[id(s.module._parameters[name])] = v.flatten(1)
    return torch.cat([by_param[id(p)] for p in trainable], dim=1)


def _clipped(tape: Tape, per_sample: torch.Tensor, clip: float) -> torch.Tensor:
    """Each example's clipped gradient, [B, P] in float64, with the clip factor Opacus' formula gives from the
    norms the tape clips by (Tape.clip_and_sum)."""
    c = (clip / (tape.per_sample_norms().detach().double() + 1e-6)).clamp(max=1.0)
    return per_sample * c[:, None]


def _bf16_pass(ghost="auto", n=8):
    m, module, trainable, z, y = _setup(layers="1-4", n=n)
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    tape = Tape(module, ghost=ghost, precision="bf16")
    module(z, y, noise, t).mean().backward()
    return tape, trainable


@pytest.mark.parametrize("ghost", ["always", "never"])
def test_bf16_norms_are_float32_and_every_clipped_gradient_has_norm_at_most_c(ghost):
    tape, trainable = _bf16_pass(ghost)
    linear = [s for s in tape.slots if s.kind in ("linear", "conv1x1") and s.records]
    assert linear and all(r.dtype == torch.bfloat16 for s in linear for r in s.records[0])  # autocast ran
    assert all(p.grad is None for p in trainable)
    per_sample = _per_sample_from_records(tape, trainable)
    norms = tape.per_sample_norms()
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms.detach().double(), per_sample.norm(dim=1), rtol=1e-5, atol=0)
    clip = 0.5 * per_sample.norm(dim=1).min().item()  # every example clipped: each contribution sits at C
    clipped = _clipped(tape, per_sample, clip)
    assert clipped.norm(dim=1).max().item() <= clip * (1 + 1e-6)
    summed = torch.cat([s.flatten() for s in tape.clip_and_sum(trainable, clip)])
    assert summed.dtype == torch.float32
    _close(summed.double(), clipped.sum(0))
    tape.remove()


def test_the_bound_check_catches_norms_taken_in_bfloat16(monkeypatch):
    """The check above is sharp: with the tape's entries left in bfloat16 for the norm math (no upcast), some
    example's clipped gradient comes out above C."""
    monkeypatch.setattr(bookkeeping, "upcast", lambda t: t)
    tape, trainable = _bf16_pass("always")
    per_sample = _per_sample_from_records(tape, trainable)
    clip = 0.5 * per_sample.norm(dim=1).min().item()
    assert _clipped(tape, per_sample, clip).norm(dim=1).max().item() > clip * (1 + 1e-6)
    tape.remove()


def test_bf16_norms_agree_with_fp32_norms_to_bfloat16_precision():
    m, module, trainable, z, y = _setup(layers="1-4", n=6)
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    norms = {}
    for precision in ("fp32", "bf16"):
        tape = Tape(module, precision=precision)
        module(z, y, noise, t).mean().backward()
        norms[precision] = tape.per_sample_norms().detach()
        tape.remove()
    assert not torch.equal(norms["bf16"], norms["fp32"])
    torch.testing.assert_close(norms["bf16"], norms["fp32"], rtol=3e-2, atol=0)


def test_fp32_is_the_default_and_runs_no_autocast():
    assert FinetuneConfig(eps=5).precision == "fp32"
    m, module, trainable, z, y = _setup(layers="1-4", n=4)
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    plain = module(z, y, noise, t)
    results = []
    for kw in ({}, {"precision": "fp32"}):
        tape = Tape(module, **kw)
        assert tape.precision == "fp32"
        loss = module(z, y, noise, t)
        # the float32 forward of the plain module (the tape's own LayerNorm/GroupNorm split rounds differently)
        torch.testing.assert_close(loss, plain, rtol=1e-5, atol=0)
        loss.mean().backward()
        assert all(r.dtype == torch.float32 for s in tape.slots for rec in s.records
                   for r in (rec if isinstance(rec, tuple) else rec.values()))
        results.append((tape.per_sample_norms().detach(), tape.clip_and_sum(trainable, 1e-3)))
        tape.remove()
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_a_bf16_dp_step_of_one_example_has_gradient_norm_at_most_c():
    m, module, trainable, z, y = _setup(n=1)
    clip = 1e-3
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=1.0), DataLoader(TensorDataset(z, y), batch_size=1),
                                     sigma=0.0, clip=clip, clipping="bookkeeping", precision="bf16")
    dp_module(z, y).mean().backward()
    assert opt.tape.per_sample_norms()[0] > clip  # clipping is active
    opt.step()  # σ = 0, expected batch 1: p.grad is the one clipped gradient
    grad = torch.cat([p.grad.flatten() for p in trainable])
    assert grad.dtype == torch.float32 and all(p.dtype == torch.float32 for p in trainable)
    assert grad.norm().item() == pytest.approx(clip, rel=1e-5) and grad.norm().item() <= clip * (1 + 1e-6)
    dp_module._close()


def test_bf16_with_opacus_hooks_is_refused():
    m, module, trainable, z, y = _setup(n=2)
    with pytest.raises(ConfigError, match="book-keeping"):
        privatize(module, torch.optim.SGD(trainable, lr=1.0), DataLoader(TensorDataset(z, y), batch_size=1),
                  sigma=0.0, clip=1.0, clipping="hooks", precision="bf16")
    with pytest.raises(ConfigError, match="clipping hooks"):
        validate(FinetuneConfig, eps=5, clipping="hooks", precision="bf16")
    assert validate(FinetuneConfig, non_private=True, clipping="hooks", precision="bf16").precision == "bf16"


def test_a_bf16_dp_finetune_clips_on_a_bf16_tape(monkeypatch):
    from dpsearch.data import printed_digits
    from dpsearch.finetune import dp_finetune
    from dpsearch.models import build_ldm
    from dpsearch.privacy import dpsgd
    from tests.test_finetune import CFG

    made = []

    class Spy(Tape):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.precision)

    monkeypatch.setattr(dpsgd, "Tape", Spy)
    m = build_ldm(CFG)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=1, physical_batch=8, precision="bf16")
    res = dp_finetune(m, printed_digits(40, progress=False), cfg, progress=False)
    assert made[-1] == "bf16" and res.privacy.clipping == "bookkeeping" and res.privacy.steps == 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in m.unet.parameters())
    assert not any("forward" in mod.__dict__ for mod in m.unet.modules())


def test_a_bf16_run_that_would_clip_with_hooks_is_refused_before_any_release(monkeypatch):
    from dpsearch import finetune
    from dpsearch.data import printed_digits
    from dpsearch.models import build_ldm
    from tests.test_finetune import CFG

    monkeypatch.setattr(finetune, "noisy_class_means", lambda *a, **k: pytest.fail("the warm-up was released"))
    cfg = FinetuneConfig(eps=3.0, scope="unet", batch=20, epochs=1, precision="bf16", warmup=0.05)
    with pytest.raises(ConfigError, match="book-keeping"):  # the whole UNet has 3×3 convs: Opacus' hooks
        finetune.dp_finetune(build_ldm(CFG), printed_digits(40, progress=False), cfg, progress=False)
