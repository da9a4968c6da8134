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


def test_elastic_variant_is_deterministic_different_and_keeps_the_ink():
    import numpy as np

    from dpsearch.data.printed_digits import elastic_distort

    a = printed_digits(100, seed=3, progress=False, elastic=True)
    assert torch.equal(a.images, printed_digits(100, seed=3, progress=False, elastic=True).images)
    plain = printed_digits(100, seed=3, progress=False)
    assert torch.equal(a.labels, plain.labels) and not torch.equal(a.images, plain.images)
    assert "elastic" in a.name
    img = np.zeros((28, 28), np.float32)
    img[8:20, 12:16] = 255.0
    warped = elastic_distort(img, np.random.default_rng(0), alpha=30)
    assert not np.array_equal(warped, img) and 0.6 < warped.sum() / img.sum() < 1.4  # moved, not erased
