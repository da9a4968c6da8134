"""Noise multiplicity k (DPDM): each image's one clipped gradient is the mean over its k (timestep, noise)
draws, exactly, on both clipping paths; against a slow reference that builds each image's loss by hand."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dpsearch.finetune import DiffusionLoss
from dpsearch.models import diffusion_loss
from dpsearch.privacy.dpsgd import dp_sgd_epoch, poisson_loader, privatize
from dpsearch.privacy.randomness import MechanismRandomness
from tests.test_finetune import _setup

K = 3


def _reference(module, trainable, z, y, noise, t) -> torch.Tensor:
    """[N, trainable parameters]: example i's gradient of the mean of its K losses, one backward each."""
    grads = []
    for i in range(len(z)):
        module.zero_grad()
        rows = slice(i * K, (i + 1) * K)
        zi, yi = z[i:i + 1].expand(K, *z.shape[1:]), y[i:i + 1].expand(K)
        diffusion_loss(module.unet, module.embedder, module.scheduler, zi, yi, 0.0, noise[rows], t[rows]).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainable]).clone())
    return torch.stack(grads)


@pytest.mark.parametrize("clipping", ["hooks", "bookkeeping"])
def test_the_clipped_sum_over_k_draws_matches_the_per_image_reference(clipping):
    m, _, trainable, z, y = _setup(layers="1-4", n=6)
    module = DiffusionLoss(m, label_dropout=0.0, draws=K)
    noise, t = torch.randn(len(z) * K, *z.shape[1:]), torch.randint(0, 1000, (len(z) * K,))
    grads = _reference(module, trainable, z, y, noise, t)
    # the draws disagree: the mean over them is shorter than the mean of their norms (else k would buy nothing)
    clip = grads.norm(dim=1).median().item()
    expected = (grads * (clip / (grads.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)).sum(0)
    module.zero_grad(set_to_none=True)
    loader = DataLoader(TensorDataset(z, y), batch_size=6)
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=0.0), loader, sigma=0.0, clip=clip,
                                     clipping=clipping, draws=K)
    dp_module(z, y, noise, t).mean().backward()
    if clipping == "hooks":
        from dpsearch.privacy.dpsgd import average_draws

        average_draws(trainable, K)
        norms = torch.cat([p.grad_sample.flatten(1) for p in trainable], 1).norm(dim=1)
    else:
        norms = opt.tape.per_sample_norms()
    torch.testing.assert_close(norms, grads.norm(dim=1), rtol=1e-4, atol=1e-7)
    opt.step()  # p.grad = clipped sum / expected batch (6)
    step = torch.cat([p.grad.flatten() for p in trainable]) * 6
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    dp_module._close()


def test_grouping_the_draws_wrongly_fails_the_comparison():
    """Sharpness: folding the K rows of an image as if they were K images changes the norms."""
    m, _, trainable, z, y = _setup(layers="1-4", n=4)
    module = DiffusionLoss(m, label_dropout=0.0, draws=K)
    noise, t = torch.randn(len(z) * K, *z.shape[1:]), torch.randint(0, 1000, (len(z) * K,))
    grads = _reference(module, trainable, z, y, noise, t)
    module.zero_grad(set_to_none=True)
    _, dp_module, _, _ = privatize(module, torch.optim.SGD(trainable, lr=0.0), DataLoader(TensorDataset(z, y), batch_size=4),
                                   sigma=0.0, clip=1.0, clipping="hooks", draws=K)
    dp_module(z, y, noise, t).mean().backward()
    per_row = torch.cat([p.grad_sample.flatten(1) for p in trainable], 1)
    assert per_row.shape[0] == len(z) * K  # Opacus alone sees rows, not images
    with pytest.raises(AssertionError):
        torch.testing.assert_close(per_row.view(len(z), K, -1)[:, 0].norm(dim=1), grads.norm(dim=1), rtol=1e-3, atol=1e-7)
    dp_module._close()


def test_a_dp_epoch_with_k_draws_steps_as_planned_on_physical_batches_smaller_than_k():
    """physical_batch counts rows: 4 rows at k = 3 is one image per pass; the plan's steps are all taken."""
    m, _, trainable, z, y = _setup(layers="2-3", n=12)
    module = DiffusionLoss(m, label_dropout=0.1, draws=K)
    data = TensorDataset(z, y)
    loader = DataLoader(data, batch_size=4)
    _, dp_module, opt, dp_loader = privatize(module, torch.optim.SGD(trainable, lr=0.1), loader, sigma=1.0, clip=1.0,
                                             draws=K)
    before = [p.detach().clone() for p in trainable]
    done = dp_sgd_epoch(dp_module, opt, dp_loader, trainable, "cpu", physical_batch=4, draws=K)
    assert done == len(dp_loader) == 3
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))
    dp_module._close()


def test_ema_releases_the_average_of_the_iterates_and_resumes_it():
    """cfg.ema: the released weights are diffusers' EMA of the noisy iterates (≠ the last iterate), the
    record says so, and a resumed run continues the same average from the checkpoint."""
    from dpsearch.config import FinetuneConfig
    from dpsearch.data import printed_digits
    from dpsearch.finetune import FinetuneState, dp_finetune
    from dpsearch.models import build_ldm
    from tests.test_finetune import CFG

    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=2, physical_batch=8, lr=1e-2,
                         ema=0.9, multiplicity=2)
    states: list[FinetuneState] = []
    m = build_ldm(CFG)
    res = dp_finetune(m, data, cfg, progress=False, on_epoch=lambda rec, st: states.append(st))
    assert res.privacy.ema == 0.9 and res.privacy.multiplicity == 2
    released = {f"{pre}.{n}": p for pre, mod in (("unet", res.model.unet), ("embedder", res.model.embedder))
                for n, p in mod.named_parameters()}
    last = states[-1].trainable
    assert states[-1].ema["optimization_step"] == res.privacy.steps == 6
    diff = max((released[k] - last[k]).abs().max().item() for k in last)
    assert diff > 0  # the average, not the last iterate
    ema_weights = dict(zip(last, states[-1].ema["shadow_params"]))
    assert all(torch.equal(released[k], ema_weights[k]) for k in last)
    # resume from epoch 1: the EMA state travels with the checkpoint, and a checkpoint without one is refused
    m2 = build_ldm(CFG)
    res2 = dp_finetune(m2, data, cfg, progress=False, resume=states[0])
    assert res2.privacy.steps == 6
    bare = FinetuneState(states[0].epoch, states[0].steps, states[0].trainable, states[0].optimizer, states[0].history)
    with pytest.raises(Exception, match="without an EMA"):
        dp_finetune(build_ldm(CFG), data, cfg, progress=False, resume=bare)


def test_grouping_refuses_rows_that_are_not_examples_times_draws():
    """A layer that saw B rows, not B·k, cannot be told which rows belong to which image: refused."""
    from dpsearch.privacy.dpsgd import average_draws

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad_sample = torch.randn(6, 3)  # 6 rows: 2 examples × 3 draws passes, 6 examples × 3 draws does not
    average_draws([p], K, examples=2)
    assert p.grad_sample.shape == (2, 3)
    p.grad_sample = torch.randn(6, 3)
    with pytest.raises(RuntimeError, match="different images"):
        average_draws([p], K, examples=6)
