"""Book-keeping clipping against the slow one-example-at-a-time reference, on the real diffusers UNet."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from dpsearch.privacy.bookkeeping import Tape, UnsupportedLayer
from dpsearch.privacy.dpsgd import clipping_path, privatize
from tests.test_finetune import _one_at_a_time, _setup


def _clipped_reference(grads: torch.Tensor, clip: float) -> torch.Tensor:
    return (grads * (clip / (grads.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)).sum(0)


def _close(actual, expected, **kw):
    # float32 sums in another order: absolute tolerance at 1e-5 of the largest coordinate
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item(), **kw)


@pytest.mark.parametrize("ghost", ["auto", "always", "never"])
def test_norms_and_clipped_sum_match_the_reference_without_computing_p_grad(ghost):
    """Every layer type of the trainable set (Linear, 1×1 conv, LayerNorm, GroupNorm, the class Embedding),
    ghost norms and instantiated per-sample gradients alike."""
    m, module, trainable, z, y = _setup(layers="1-4", n=6)
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    grads = _one_at_a_time(module, trainable, z, y, noise, t)
    module.zero_grad(set_to_none=True)
    tape = Tape(module, ghost=ghost)
    kinds = {s.kind for s in tape.slots}
    assert kinds == {"linear", "conv1x1", "layernorm", "groupnorm", "embedding"}
    module(z, y, noise, t).mean().backward()
    assert all(p.grad is None for p in trainable)  # autograd's batch gradient is never formed
    torch.testing.assert_close(tape.per_sample_norms(), grads.norm(dim=1), rtol=1e-4, atol=1e-7)
    clip = grads.norm(dim=1).median().item()  # half the examples are clipped
    sums = tape.clip_and_sum(trainable, clip)
    # no autograd graph behind the clipped sums: one would keep every physical batch's records (activations)
    # alive until the logical step ends, though grad mode is on where Opacus calls this
    assert torch.is_grad_enabled() and all(s.grad_fn is None and not s.requires_grad for s in sums)
    summed = torch.cat([s.flatten() for s in sums])
    _close(summed, _clipped_reference(grads, clip))
    tape.remove()
    assert not any("forward" in mod.__dict__ for mod in module.modules())


def test_a_five_percent_clipping_error_fails_the_comparison():
    """The comparison above is sharp enough to catch a clip norm off by 5%."""
    m, module, trainable, z, y = _setup(layers="1-4", n=6)
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),))
    grads = _one_at_a_time(module, trainable, z, y, noise, t)
    module.zero_grad(set_to_none=True)
    tape = Tape(module)
    module(z, y, noise, t).mean().backward()
    clip = grads.norm(dim=1).median().item()
    summed = torch.cat([s.flatten() for s in tape.clip_and_sum(trainable, clip * 1.05)])
    with pytest.raises(AssertionError):
        _close(summed, _clipped_reference(grads, clip))
    tape.remove()


def test_a_layer_used_twice_per_example_sums_both_uses_before_the_norm():
    torch.manual_seed(0)
    lin = nn.Linear(5, 5)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x))).pow(2).sum((1, 2))

    module = Twice()
    x = torch.randn(4, 3, 5)
    ref = []
    for i in range(len(x)):
        module.zero_grad()
        module(x[i:i + 1]).sum().backward()
        ref.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    ref = torch.stack(ref)
    tape = Tape(module)
    module(x).mean().backward()
    torch.testing.assert_close(tape.per_sample_norms(), ref.norm(dim=1), rtol=1e-5, atol=1e-6)
    clip = ref.norm(dim=1).median().item()
    summed = torch.cat([s.flatten() for s in tape.clip_and_sum(list(module.parameters()), clip)])
    _close(summed, _clipped_reference(ref, clip))
    tape.remove()


def test_a_layer_run_on_chunks_of_the_batch_is_refused():
    """Chunks along the batch (diffusers' chunked feed-forward) would pair example i of one chunk with example i
    of the other as if one example used the layer twice: an under-clipped sum."""

    class Chunked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return torch.cat([self.lin(c) for c in x.chunk(2)]).pow(2).sum(1)

    module = Chunked()
    tape = Tape(module)
    with pytest.raises(RuntimeError, match="whole batch"):
        module(torch.randn(4, 3)).mean().backward()
    tape.remove()


def test_tied_parameters_are_refused():
    a = nn.Linear(3, 3)
    b = nn.Linear(3, 3)
    b.weight = a.weight
    with pytest.raises(UnsupportedLayer, match="shared"):
        Tape(nn.Sequential(a, b))


def test_an_unsupported_trainable_layer_is_named_and_nothing_is_changed():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayer, match=r"0 \(Conv2d\)"):
        Tape(module)
    assert not any("forward" in mod.__dict__ for mod in module.modules())
    assert clipping_path(module, "auto") == "hooks"
    with pytest.raises(UnsupportedLayer):
        clipping_path(module, "bookkeeping")
    module[0].requires_grad_(False)
    assert clipping_path(module, "auto") == "bookkeeping"  # frozen layers need no rule


@pytest.mark.parametrize("first_backward", [True, False])
def test_a_second_pass_before_the_step_is_refused(first_backward):
    """Two passes on one tape would be clipped as one example using each layer twice."""
    m, module, trainable, z, y = _setup(layers="1-2", n=4)
    loader = DataLoader(TensorDataset(z, y), batch_size=2)
    _, dp_module, opt, _ = privatize(module, torch.optim.SGD(trainable, lr=0.0), loader, sigma=0.0, clip=1.0,
                                     clipping="bookkeeping")
    loss = dp_module(z[:2], y[:2]).mean()
    if first_backward:
        loss.backward()
    with pytest.raises(RuntimeError, match="optimizer.step"):
        dp_module(z[2:], y[2:]).mean().backward()
    opt.zero_grad(set_to_none=True)
    dp_module(z[2:], y[2:]).mean().backward()  # after zero_grad the tape is clean again
    opt.step()
    dp_module._close()
    assert not any("forward" in mod.__dict__ for mod in module.modules())
