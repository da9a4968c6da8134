import pytest
import torch

from dpsearch.classifiers import build_classifier


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_classifiers_give_one_logit_per_class_and_learn(arch, channels, size):
    torch.manual_seed(0)
    net = build_classifier(arch, channels, 10, size)
    x = torch.randn(16, channels, size, size)
    y = torch.arange(16) % 10
    assert net(x).shape == (16, 10)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (net.eval()(x).argmax(1) == y).float().mean() >= 0.9  # it can fit 16 examples


def test_unknown_classifier_is_named():
    with pytest.raises(ValueError, match="unknown classifier 'vit'"):
        build_classifier("vit", 1, 10, 28)
