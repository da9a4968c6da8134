import torch

from dpsearch.config import EvaluateConfig
from dpsearch.data import ImageSet, printed_digits
from dpsearch.evaluate import evaluate, fid

CFG = EvaluateConfig(classifier_epochs=2, fid_extractor="public-cnn")


def test_classifier_trained_on_public_digits_transfers_to_real_mnist(mnist):
    _, test = mnist
    res = evaluate(printed_digits(3000, seed=1, progress=False), test.subset(2000), CFG, progress=False)
    assert res["oracle/accuracy"] > 0.3  # chance is 0.1: printed digits carry real signal
    assert res["synthetic/holdout_accuracy"] > 0.5  # 2 epochs on heavily augmented fonts
    assert "oracle/note" in res and "public-cnn" in res["fid_extractor"]


def test_fid_is_small_for_same_distribution_and_large_for_noise():
    a = printed_digits(1000, seed=2, progress=False)
    b = printed_digits(1000, seed=3, progress=False)
    noise = ImageSet(torch.randint(0, 256, (1000, 1, 28, 28), dtype=torch.uint8), a.labels, 10, "noise")
    same, name = fid(a, b, CFG)
    far, _ = fid(a, noise, CFG)
    assert 0 <= same < far / 10
    assert "public-cnn" in name


def test_fid_of_features_with_a_dead_unit_is_quiet_and_finite(monkeypatch):
    """A feature constant over both sets (a ReLU unit that never fires) makes the covariance product singular:
    no scipy "Matrix is singular" line, and a finite FID."""
    import warnings

    import numpy as np

    from dpsearch import evaluate as ev

    rng = np.random.default_rng(0)

    def features(s, *a, **k):
        f = rng.normal(size=(len(s), 16))
        f[:, 3] = 0.0
        return f

    monkeypatch.setattr(ev, "_features", features)
    monkeypatch.setattr(ev, "_REFERENCE_STATS", {})  # no statistics of a real-extractor run stand in
    a = printed_digits(50, seed=2, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d, _ = fid(a, a, CFG)
    assert np.isfinite(d)
    assert not [w for w in caught if "singular" in str(w.message)]  # (clean-fid's sqrtm(disp=False) DeprecationWarning
    # is hidden by Python's default filters)


def test_a_reference_sets_statistics_are_computed_once_and_never_stand_in_for_another_set(monkeypatch):
    """The real test split (or V) is compared with every trial's and candidate's sample: its features are extracted
    once per process, keyed by its images, so a different set of the same size gets its own."""
    from dpsearch import evaluate as ev

    monkeypatch.setattr(ev, "_REFERENCE_STATS", {})
    a = printed_digits(300, seed=2, progress=False)
    b = printed_digits(300, seed=3, progress=False)
    c = ImageSet(b.images.flip(-1), b.labels, 10, "mirrored")  # same size and labels, other images
    calls = []
    real = ev._features
    monkeypatch.setattr(ev, "_features", lambda data, *x, **k: calls.append(len(data)) or real(data, *x, **k))
    first, _ = fid(a, b, CFG)
    assert fid(a, b, CFG)[0] == first and calls == [300, 300, 300]  # b's features once, a's each time
    other, _ = fid(a, c, CFG)
    assert other != first and len(calls) == 5
    monkeypatch.setattr(ev, "_REFERENCE_STATS", {})
    assert fid(a, c, CFG)[0] == other  # what it would be computed afresh
