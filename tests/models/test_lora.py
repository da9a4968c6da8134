"""LoRA adapters under DP: placement, per-sample gradients against the one-at-a-time reference, training,
merging and the diffusers LoRA file."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dpsearch.config import FinetuneConfig
from dpsearch.data import printed_digits
from dpsearch.finetune import DiffusionLoss, FinetuneState, dp_finetune, finetune_non_private
from dpsearch.models import attention_modules, build_ldm, load_ldm
from dpsearch.models.lora import LORA_FILE, add_lora, load_lora, lora_targets, merge_lora
from dpsearch.pipeline import TrialOutput, write_outputs
from dpsearch.privacy.bookkeeping import Tape
from dpsearch.privacy.dpsgd import privatize
from tests.test_finetune import CFG, _one_at_a_time


def _lora_setup(layers=(2, 4), rank=4, n=6):
    """A model with adapters on modules 2-4 whose B is not zero (at init B = 0 and A's gradient is 0)."""
    torch.manual_seed(0)
    m = build_ldm(CFG)
    for part in (m.unet, m.embedder, m.vae):
        part.requires_grad_(False)
    adapters = add_lora(m.unet, *layers, rank)
    with torch.no_grad():
        for name, p in m.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    m.embedder.requires_grad_(True)
    trainable = adapters + list(m.embedder.parameters())
    module = DiffusionLoss(m, label_dropout=0.0)
    z, y = torch.randn(n, 4, 8, 8), torch.arange(n) % 10
    return m, module, trainable, z, y


def test_adapters_sit_on_the_projections_of_the_chosen_modules_only():
    m = build_ldm(CFG)
    mods = attention_modules(m.unet)
    targets = lora_targets(m.unet, 2, 3)
    assert len(targets) == 2 * 8  # two modules × (q, k, v, out) × (self, cross)
    assert all(t.startswith((mods[1].name + ".", mods[2].name + ".")) for t in targets)
    m.unet.requires_grad_(False)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 1, 32)
    before = m.unet(x, t, encoder_hidden_states=c).sample
    adapters = add_lora(m.unet, 2, 3, rank=4)
    trainable = [n for n, p in m.unet.named_parameters() if p.requires_grad]
    assert len(adapters) == len(trainable) == 2 * len(targets)  # one A and one B each
    assert all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all(n.startswith((mods[1].name, mods[2].name)) for n in trainable)
    torch.testing.assert_close(m.unet(x, t, encoder_hidden_states=c).sample, before)  # B = 0: unchanged at start
    assert sum(p.numel() for p in adapters) == sum(4 * (i + o) for i, o in _shapes(m.unet, targets))


def _shapes(unet, targets):
    mods = dict(unet.named_modules())
    return [(mods[t].base_layer.in_features, mods[t].base_layer.out_features) for t in targets]


@pytest.mark.parametrize("clipping", ["hooks", "bookkeeping"])
def test_per_sample_adapter_gradients_match_the_one_at_a_time_reference(clipping):
    m, module, trainable, z, y = _lora_setup()
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    grads = _one_at_a_time(module, trainable, z, y, noise, t)
    assert grads.norm(dim=1).min() > 0
    clip = grads.norm(dim=1).median().item()  # half the examples are clipped
    reference = (grads * (clip / (grads.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)).sum(0)
    module.zero_grad(set_to_none=True)
    loader = DataLoader(TensorDataset(z, y), batch_size=len(z))  # q = 1: the expected batch is all of z
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=0.0), loader, sigma=0.0, clip=clip,
                                     clipping=clipping)
    if clipping == "bookkeeping":
        assert {s.kind for s in opt.tape.slots} == {"linear", "embedding"}  # A and B, and the class embedding
    dp_module(z, y, noise, t).mean().backward()
    opt.step()
    step_grad = torch.cat([p.grad.flatten() for p in trainable])
    torch.testing.assert_close(step_grad, reference / len(z), rtol=1e-4,
                               atol=1e-5 * reference.abs().max().item() / len(z))
    dp_module._close()


def test_the_reference_comparison_catches_a_five_percent_clip_error():
    m, module, trainable, z, y = _lora_setup()
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    grads = _one_at_a_time(module, trainable, z, y, noise, t)
    clip = grads.norm(dim=1).median().item()
    reference = (grads * (clip / (grads.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)).sum(0)
    module.zero_grad(set_to_none=True)
    tape = Tape(module)
    module(z, y, noise, t).mean().backward()
    summed = torch.cat([s.flatten() for s in tape.clip_and_sum(trainable, clip * 1.05)])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(summed, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    tape.remove()


@pytest.mark.parametrize("clipping", ["hooks", "bookkeeping"])
def test_a_dp_lora_fine_tune_trains_the_adapters_merges_them_and_keeps_the_rest(clipping, tmp_path):
    """opacus#820 guard: the adapters must really change under DP-SGD (B starts at zero)."""
    torch.manual_seed(0)
    m = build_ldm(CFG)
    before = {k: v.clone() for k, v in m.unet.state_dict().items()}
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", method="lora", rank=4, clip=0.1, batch=20, epochs=2, physical_batch=8,
                         lr=1e-2, clipping=clipping)
    res = dp_finetune(m, data, cfg, progress=False)
    weights, config = res.adapter
    assert config["r"] == 4 and config["lora_alpha"] == 4
    b = [v for k, v in weights.items() if ".lora.up." in k]  # diffusers names B "up" and A "down"
    assert b and all(v.abs().max() > 0 for v in b)  # every B moved off zero
    after = m.unet.state_dict()
    assert set(after) == set(before)  # merged and unloaded: a plain diffusers UNet again
    adapted = {f"{t}.weight" for t in lora_targets(m.unet, 2, 3)}
    assert all(not torch.equal(after[k], before[k]) for k in adapted)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in adapted)
    assert all(not p.requires_grad for p in m.unet.parameters())
    p = res.privacy
    assert p.method == "lora" and p.lora_rank == 4 and p.eps <= 3.0 and p.clipping == clipping
    assert p.trainable_params == sum(v.numel() for v in weights.values()) + sum(x.numel() for x in m.embedder.parameters())
    assert p.trainable_fraction < 0.05

    # The trial directory: model/ with the adapter merged, lora/ as diffusers LoRA weights.
    write_outputs(tmp_path, TrialOutput(m, p.to_dict(), res.history, adapter=res.adapter), {})
    assert (tmp_path / "lora" / LORA_FILE).exists()
    torch.manual_seed(0)
    fresh = build_ldm(CFG)
    fresh.embedder.load_state_dict(m.embedder.state_dict())
    load_lora(fresh.unet, tmp_path / "lora")
    merge_lora(fresh.unet)
    saved = load_ldm(tmp_path / "model")
    x, tt, c = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.randn(2, 1, 32)
    torch.testing.assert_close(fresh.unet(x, tt, encoder_hidden_states=c).sample,
                               saved.unet(x, tt, encoder_hidden_states=c).sample, rtol=1e-4, atol=1e-5)


def test_a_lora_state_saved_mid_run_resumes(tmp_path):
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="1-2", method="lora", rank=2, clip=0.1, batch=20, epochs=2, physical_batch=8,
                         lr=1e-2)
    dp_finetune(build_ldm(CFG), data, cfg, progress=False,
                on_epoch=lambda rec, st: rec["epoch"] == 1 and st.save(tmp_path / "state.pt"))
    state = FinetuneState.load(tmp_path / "state.pt")
    assert any("lora_A" in k for k in state.trainable)
    res = dp_finetune(build_ldm(CFG), data, cfg, progress=False, resume=state)
    assert [h["epoch"] for h in res.history] == [1, 2] and res.privacy.steps == 6 and res.adapter is not None


def test_non_private_lora_reference_trains_only_adapters():
    torch.manual_seed(0)
    m = build_ldm(CFG)
    before = {k: v.clone() for k, v in m.unet.state_dict().items()}
    cfg = FinetuneConfig(non_private=True, layers="3-3", method="lora", rank=2, batch=20, epochs=1, physical_batch=8,
                         lr=1e-2)
    res = finetune_non_private(m, printed_digits(40, progress=False), cfg, progress=False)
    adapted = {f"{t}.weight" for t in lora_targets(m.unet, 3, 3)}
    after = m.unet.state_dict()
    assert res.adapter is not None and all(not torch.equal(after[k], before[k]) for k in adapted)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in adapted)


def test_lora_with_unet_scope_is_refused():
    with pytest.raises(ValueError, match="lora"):
        FinetuneConfig(eps=1.0, scope="unet", method="lora")
