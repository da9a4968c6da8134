"""The class-mean warm-up inside a DP fine-tune: it trains before DP-SGD, its release is in the record's ε,
and a resumed run does not release the means again."""

import pytest
import torch

from dpsearch.config import ConfigError, FinetuneConfig
from dpsearch.data import printed_digits
from dpsearch.finetune import FinetuneState, dp_finetune
from dpsearch.models import build_ldm
from dpsearch.privacy.accounting import epsilon_for
from dpsearch.warmup import augment, means_as_images, warm_up
from tests.test_finetune import CFG


def test_augmented_copies_cycle_the_classes_and_stay_in_range():
    means = torch.rand(10, 1, 16, 16)
    images, labels = augment(means, 25)
    assert images.shape == (25, 1, 16, 16) and labels.tolist() == [i % 10 for i in range(25)]
    assert images.min() >= -1 and images.max() <= 1
    again, _ = augment(means, 25)
    assert not torch.equal(images, again)  # random copies, not the means themselves
    assert len(means_as_images(means)) == 10


def test_warm_up_moves_the_trainable_weights_only():
    from dpsearch.finetune import DiffusionLoss, select_trainable

    torch.manual_seed(0)
    m = build_ldm(CFG)
    cfg = FinetuneConfig(eps=3.0, layers="2-3")
    trainable = select_trainable(m, cfg, 2, 3)
    ids = {id(p) for p in trainable}
    before = {n: p.detach().clone() for n, p in m.unet.named_parameters()}
    warm_up(m, DiffusionLoss(m, 0.1), trainable, torch.rand(10, 1, 16, 16), steps=2, progress=False)
    changed = {n for n, p in m.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(id(dict(m.unet.named_parameters())[n]) in ids for n in changed)


def test_a_warm_started_run_accounts_the_release_and_a_resume_does_not_repeat_it(tmp_path):
    data = printed_digits(60, progress=False)
    cfg = FinetuneConfig(eps=3.0, layers="2-3", clip=0.1, batch=20, epochs=2, physical_batch=8, lr=1e-2,
                         warmup=0.2, warmup_steps=2)
    states = []
    torch.manual_seed(0)
    res = dp_finetune(build_ldm(CFG), data, cfg, progress=False,
                      on_epoch=lambda rec, state: states.append(state) if rec["epoch"] == 1 else None)
    p = res.privacy
    assert p.warmup_share == 0.2 and p.warmup_sigma > 0 and p.eps <= 3.0
    assert p.eps == pytest.approx(epsilon_for(p.sigma, p.q, p.steps, p.delta, p.accountant, p.warmup_sigma))
    assert abs(p.eps_pld_check - p.eps) / p.eps < 0.03
    # the accountant held the release from the start: epoch 1 spent more than its steps alone
    assert res.history[0]["eps_spent"] > epsilon_for(p.sigma, p.q, 3, p.delta, p.accountant)
    assert res.history[-1]["eps_spent"] == pytest.approx(p.eps, rel=0.02)
    assert res.warmup_means.shape == (10, *data.images.shape[1:])
    states[0].save(tmp_path / "state.pt")
    again = dp_finetune(build_ldm(CFG), data, cfg, progress=False, resume=FinetuneState.load(tmp_path / "state.pt"))
    assert again.warmup_means is None and again.privacy.eps == pytest.approx(p.eps)
    # resuming a warmed-up state without the warm-up would leave its release out of the accountant: refused
    with pytest.raises(ConfigError, match="warm-up"):
        dp_finetune(build_ldm(CFG), data, cfg.model_copy(update={"warmup": None}), progress=False,
                    resume=FinetuneState.load(tmp_path / "state.pt"))
