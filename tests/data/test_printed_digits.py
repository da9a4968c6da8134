import torch

from dpsearch.data import printed_digits


def test_deterministic_balanced_and_mnist_shaped():
    a, b = printed_digits(200, seed=3, progress=False), printed_digits(200, seed=3, progress=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.image_shape == (1, 28, 28) and a.class_counts() == [20] * 10
    c = printed_digits(200, seed=4, progress=False)
    assert not torch.equal(a.images, c.images)


def test_digits_are_centred_and_not_blank():
    d = printed_digits(100, progress=False)
    ink = d.images.float().sum(dim=(1, 2, 3))
    assert (ink > 255 * 10).all()
    # centre of mass near the middle, like MNIST
    w = d.images.float()[:, 0]
    ys = torch.arange(28).float()
    cy = (w.sum(2) * ys).sum(1) / w.sum((1, 2))
    cx = (w.sum(1) * ys).sum(1) / w.sum((1, 2))
    assert ((cy - 13.5).abs() < 4).all() and ((cx - 13.5).abs() < 4).all()
