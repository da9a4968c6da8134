"""Privacy mechanics of the DP fine-tune on the real diffusers UNet."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dpsearch.config import ConfigError, FinetuneConfig, ModelConfig, default_delta
from dpsearch.data import printed_digits
from dpsearch.finetune import DiffusionLoss, FinetuneState, dp_finetune
from dpsearch.privacy.dpsgd import plan_privacy, privatize
from dpsearch.privacy.randomness import MechanismRandomness
from dpsearch.models import build_ldm, select_attention_layers

CFG = ModelConfig(ae_channels=(8, 16, 16), unet_channels=(16, 32), cross_attention_dim=32)


def _setup(layers="2-5", n=8, seed=0):
    torch.manual_seed(seed)
    m = build_ldm(CFG)
    trainable = select_attention_layers(m.unet, m.embedder, layers, frozen=(m.vae,))
    module = DiffusionLoss(m, label_dropout=0.0)
    z = torch.randn(n, 4, 8, 8)
    y = torch.arange(n) % 10
    return m, module, trainable, z, y


def _one_at_a_time(module, trainable, z, y, noise, t) -> torch.Tensor:
    """The slow reference: one backward pass per example, [N, trainable parameters]."""
    grads = []
    for i in range(len(z)):
        module.zero_grad()
        module(z[i:i + 1], y[i:i + 1], noise[i:i + 1], t[i:i + 1]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainable]).clone())
    return torch.stack(grads)


def test_per_sample_gradients_match_one_at_a_time_reference():
    m, module, trainable, z, y = _setup()
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    reference = _one_at_a_time(module, trainable, z, y, noise, t)
    module.zero_grad()
    loader = DataLoader(TensorDataset(z, y), batch_size=4)
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=0.0), loader, sigma=0.0, clip=1e9,
                                     clipping="hooks")  # book-keeping's norms: tests/privacy/test_bookkeeping.py
    dp_module(z, y, noise, t).mean().backward()
    per_sample = torch.cat([p.grad_sample.flatten(1) for p in trainable], dim=1)
    assert per_sample.shape == reference.shape
    # Per-sample norms and the sum (to_k.bias grads are ~0 by construction, so compare globally).
    torch.testing.assert_close(per_sample.norm(dim=1), reference.norm(dim=1), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(per_sample.sum(0), reference.sum(0), rtol=1e-3, atol=1e-6)
    dp_module._close()


@pytest.mark.parametrize("clipping", ["hooks", "bookkeeping"])
def test_clipped_sum_over_physical_batches_matches_the_one_at_a_time_reference(clipping):
    """Either clipping path, a logical batch split into physical batches, against a slow reference."""
    m, module, trainable, z, y = _setup(n=8)
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    grads = _one_at_a_time(module, trainable, z, y, noise, t)
    clip = grads.norm(dim=1).median().item()  # half the samples are clipped, half are not
    reference = (grads * (clip / (grads.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)).sum(0)
    module.zero_grad()
    loader = DataLoader(TensorDataset(z, y), batch_size=4)  # expected logical batch 4 (q = 1/2)
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=0.0), loader, sigma=0.0, clip=clip,
                                     clipping=clipping)
    dp_module(z[:3], y[:3], noise[:3], t[:3]).mean().backward()  # two physical batches of one logical step
    opt.signal_skip_step(True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dp_module(z[3:], y[3:], noise[3:], t[3:]).mean().backward()
    opt.step()  # p.grad is now the step's gradient: the clipped sum over both, divided by the expected batch
    step_grad = torch.cat([p.grad.flatten() for p in trainable])
    # float32 sums in another order: absolute tolerance at 1e-5 of the largest coordinate
    torch.testing.assert_close(step_grad, reference / 4, rtol=1e-4, atol=1e-5 * reference.abs().max().item() / 4)
    dp_module._close()


@pytest.mark.parametrize("clipping", ["hooks", "bookkeeping"])
def test_without_noise_one_sample_update_has_norm_clip(clipping):
    m, module, trainable, z, y = _setup(n=1)
    before = [p.detach().clone() for p in trainable]
    loader = DataLoader(TensorDataset(z, y), batch_size=1)
    clip = 1e-3
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=1.0), loader, sigma=0.0, clip=clip,
                                     clipping=clipping)
    dp_module(z, y).mean().backward()
    norm = (opt.tape.per_sample_norms()[0] if clipping == "bookkeeping" else
            torch.cat([p.grad_sample.flatten() for p in trainable]).norm())
    assert norm > clip  # clipping is active
    opt.step()
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, trainable)])
    assert update.norm().item() == pytest.approx(clip, rel=1e-4)
    dp_module._close()


@pytest.mark.parametrize("secure,clipping,backward", [(False, "hooks", False), (True, "hooks", False),
                                                      (False, "bookkeeping", False), (True, "bookkeeping", True)])
def test_noise_std_is_sigma_times_clip(secure, clipping, backward):
    """The noise-only step of an empty Poisson batch, and (book-keeping) a step after a real backward pass:
    one clipped gradient of norm ≤ C spread over > 50,000 coordinates moves the std by < 1e-3 of σC."""
    m, module, trainable, z, y = _setup(n=1)
    before = [p.detach().clone() for p in trainable]
    loader = DataLoader(TensorDataset(z, y), batch_size=1)
    sigma, clip = 1.3, 0.05
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=1.0), loader, sigma=sigma, clip=clip,
                                     rng=MechanismRandomness(secure=secure), clipping=clipping)
    if backward:
        dp_module(z, y).mean().backward()
    else:
        for p in trainable:  # the noise-only step dp_finetune takes on an empty Poisson batch
            p.grad_sample = torch.zeros((1, *p.shape))
    opt.step()
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, trainable)])
    assert update.numel() > 50_000
    assert update.std().item() == pytest.approx(sigma * clip, rel=0.02)
    assert abs(update.mean().item()) < 0.02 * sigma * clip
    dp_module._close()


def test_poisson_batch_sizes_follow_binomial():
    n, batch = 400, 20
    m, module, trainable, _, _ = _setup(n=1)
    data = TensorDataset(torch.zeros(n, 1), torch.zeros(n))
    _, dp_module, _, dp_loader = privatize(module, torch.optim.SGD(trainable, lr=0.0), DataLoader(data, batch_size=batch), 1.0, 1.0)
    q = dp_loader.batch_sampler.sample_rate
    sizes = np.array([len(x) for _ in range(25) for x, _ in dp_loader])
    assert len(sizes) == 25 * 20
    assert sizes.mean() == pytest.approx(n * q, rel=0.05)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.2)
    assert len(set(sizes.tolist())) > 5  # not a fixed-size shuffled batch
    dp_module._close()


def test_finetune_changes_only_selected_layers_and_meets_epsilon():
    m = build_ldm(CFG)
    frozen_before = {k: v.clone() for k, v in m.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in m.vae.state_dict().items()}
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=2, physical_batch=8, lr=1e-2)
    res = dp_finetune(m, data, cfg, progress=False)
    names = {n for n, _ in m.unet.named_parameters() if n.startswith(("down_blocks.1.attentions.0", "mid_block.attentions.0"))}
    after = m.unet.state_dict()
    assert any(not torch.equal(after[k], frozen_before[k]) for k in names)
    for k, v in frozen_before.items():
        if k not in names:
            assert torch.equal(after[k], v), f"frozen weight {k} changed"
    assert all(torch.equal(v, m.vae.state_dict()[k]) for k, v in vae_before.items())
    p = res.privacy
    assert p.eps <= 3.0 and p.delta == default_delta(60)  # 1/(N ln N)
    assert abs(p.eps_pld_check - p.eps) / p.eps < 0.03
    assert p.steps == 6 and p.layers == "2-3" and 0 < p.trainable_fraction < 1
    assert p.clipping == "bookkeeping"  # "auto": every trainable layer of an attention range has a rule
    assert res.history[-1]["eps_spent"] == pytest.approx(p.eps, rel=0.02)  # the accountant saw every step
    assert not any("forward" in mod.__dict__ for mod in m.unet.modules())  # the layers' own forward is back
    assert [h["epoch"] for h in res.history] == [1, 2] and res.history[-1]["eps_spent"] <= 3.0
    assert not hasattr(m.unet, "_forward_hooks") or not any(m.unet._forward_hooks)


def test_two_runs_with_identical_arguments_and_global_seed_draw_different_noise():
    """The DP noise and sampling must not be recomputable from --seed (or anything recorded)."""
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=1, physical_batch=8, lr=1e-2, seed=0)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_ldm(CFG)
        dp_finetune(m, data, cfg, progress=False)
        weights.append(torch.cat([p.detach().flatten() for n, p in m.unet.named_parameters() if "attentions" in n]))
    assert not torch.equal(weights[0], weights[1])


def test_the_loss_draws_start_from_fresh_os_entropy_not_from_the_generator_state_left_before(monkeypatch):
    """The diffusion loss's noise, timesteps and label dropout use torch's global generator. A DP run must not
    continue from whatever state earlier work in the process left it in (a previous trial's secret batch sizes, a
    validation generator's run in a reused Ray worker): the seed in force at its first draw is fresh, every run."""
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=1, physical_batch=8, lr=1e-2, seed=0)
    seeds, real = [], torch.randn_like

    def first_draw_seed(x, *a, **k):
        seeds.append(torch.initial_seed())
        return real(x, *a, **k)

    monkeypatch.setattr(torch, "randn_like", first_draw_seed)
    firsts = []
    for _ in range(2):
        torch.manual_seed(0)
        seeds.clear()
        dp_finetune(build_ldm(CFG), data, cfg, progress=False)
        firsts.append(seeds[0])
    assert 0 not in firsts and firsts[0] != firsts[1]


def test_a_state_saved_mid_run_loads_and_the_run_continues_to_the_same_budget(tmp_path):
    """A sweep stopped mid-trial resumes from this file; it must load with weights_only (the regression:
    the accountant's numpy ε in the history made every mid-trial resume fail)."""
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=2, physical_batch=8, lr=1e-2)
    saved = []

    def keep_first(rec, state):
        if rec["epoch"] == 1:
            state.save(tmp_path / "state.pt")
            saved.append(state)

    torch.manual_seed(0)
    dp_finetune(build_ldm(CFG), data, cfg, progress=False, on_epoch=keep_first)
    state = FinetuneState.load(tmp_path / "state.pt")
    assert (state.epoch, state.steps) == (1, saved[0].steps) and state.history == saved[0].history
    assert all(torch.equal(state.trainable[k], v) for k, v in saved[0].trainable.items())
    torch.manual_seed(0)
    res = dp_finetune(build_ldm(CFG), data, cfg, progress=False, resume=state)
    assert [h["epoch"] for h in res.history] == [1, 2] and res.privacy.steps == 6 and res.privacy.eps <= 3.0
    assert state.sigma == res.privacy.sigma  # the state carries the σ its steps ran at


def test_a_resume_continues_at_the_sigma_its_first_steps_ran_at_or_refuses_one_the_accountant_rejects(tmp_path):
    """Calibration may answer differently at the resume (a σ remembered on another node): the accountant's history
    must be the run's own, so the run goes on at its own σ when the accountant accepts it for the plan."""
    from dataclasses import replace

    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=2, physical_batch=8, lr=1e-2)
    states = []
    dp_finetune(build_ldm(CFG), data, cfg, progress=False, on_epoch=lambda rec, st: states.append(st))
    planned = states[0].sigma
    noisier = replace(states[0], sigma=planned * 1.05)
    res = dp_finetune(build_ldm(CFG), data, cfg, progress=False, resume=noisier)
    assert res.privacy.sigma == planned * 1.05 and res.privacy.eps < 3.0
    with pytest.raises(ConfigError, match="does not accept"):
        dp_finetune(build_ldm(CFG), data, cfg, progress=False, resume=replace(states[0], sigma=planned / 2))
    for bad in ("1.0", float("nan"), -1.0, 1e9):  # a checkpoint is untrusted input
        replace(states[0], sigma=bad).save(tmp_path / "bad.pt")
        with pytest.raises(ConfigError, match="no noise level"):
            FinetuneState.load(tmp_path / "bad.pt")


def test_the_cosine_schedule_sets_every_dp_step_and_a_resume_picks_it_up_from_the_step_count(tmp_path, monkeypatch):
    import dpsearch.finetune as finetune

    seen: list[float] = []
    set_lr = finetune._set_lr
    monkeypatch.setattr(finetune, "_set_lr", lambda opt, lr: (seen.append(lr), set_lr(opt, lr)))
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=2, physical_batch=8, lr=1e-2,
                         lr_schedule="cosine")
    states = []
    torch.manual_seed(0)
    dp_finetune(build_ldm(CFG), data, cfg, progress=False, on_epoch=lambda rec, st: states.append(st))
    # before step 1, then after each of the 6 steps: lr, …, lr/2 (halfway), …, 0
    assert seen == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(7)])
    assert seen[0] == 1e-2 and seen[3] == pytest.approx(5e-3) and seen[-1] == pytest.approx(0, abs=1e-12)
    seen.clear()
    dp_finetune(build_ldm(CFG), data, cfg, progress=False, resume=states[0])  # after epoch 1: 3 steps done
    assert seen == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(3, 7)])
    seen.clear()
    dp_finetune(build_ldm(CFG), data, cfg.model_copy(update={"lr_schedule": "constant"}), progress=False)
    assert seen == [1e-2] * 7
    states[0].save(tmp_path / "state.pt")  # the schedule travels with the state: another one is refused
    state = FinetuneState.load(tmp_path / "state.pt")
    assert state.lr == {"lr": 1e-2, "lr_schedule": "cosine"}
    for other in ({"lr_schedule": "constant"}, {"lr": 2e-2}):
        with pytest.raises(ConfigError, match="resume with the config it was started with"):
            dp_finetune(build_ldm(CFG), data, cfg.model_copy(update=other), progress=False, resume=state)


def test_a_damaged_state_is_a_clear_error(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt"):
        FinetuneState.load(tmp_path / "state.pt")


def test_plan_refuses_bad_delta_and_batch():
    with pytest.raises(ConfigError, match="not below 1/N"):
        plan_privacy(FinetuneConfig(eps=1, delta=0.02, batch=10), 100)
    with pytest.raises(ConfigError, match="larger than the private set"):
        plan_privacy(FinetuneConfig(eps=1, batch=101), 100)


def test_non_private_unet_scope_trains_convolutions_and_attention_scope_does_not():
    from dpsearch.finetune import finetune_non_private

    data = printed_digits(40, progress=False)
    for scope, conv_moves in (("unet", True), ("attention", False)):
        torch.manual_seed(0)
        m = build_ldm(CFG)
        before = m.unet.conv_in.weight.detach().clone()
        finetune_non_private(m, data, FinetuneConfig(non_private=True, scope=scope, batch=20, epochs=1, lr=1e-2),
                             progress=False)
        assert (not torch.equal(m.unet.conv_in.weight, before)) == conv_moves, scope


def test_unet_scope_refuses_a_layer_range():
    from dpsearch.config import ConfigError, validate

    with pytest.raises(ConfigError, match="scope 'unet' trains every UNet weight"):
        validate(FinetuneConfig, non_private=True, scope="unet", layers="2-3")


@pytest.mark.parametrize("clipping", ["hooks", "bookkeeping"])
def test_the_noisy_sum_is_divided_by_the_public_expected_batch_not_the_exact_count(clipping):
    """Opacus divides by int(len(dataset)·q); a slice or share must divide by the planned size's expected batch,
    so the update is post-processing of the noisy sum and public numbers only."""
    m, module, trainable, z, y = _setup()
    loader = DataLoader(TensorDataset(z, y), batch_size=4)
    n = len(z)
    _, _, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=0.0), loader, sigma=1.0, clip=1.0,
                             clipping=clipping, n_public=10 * n)
    q = 1 / math.ceil(10 * n / 4)
    assert opt.expected_batch_size == max(1, int(10 * n * q)) != int(n * q)
