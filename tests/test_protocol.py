import math

import pytest
import torch

from dpsearch.data import ImageSet, printed_digits
from dpsearch.protocol import DPIMAGEBENCH, Protocol, benchmark_delta, score, split_synthetic


def test_delta_is_one_over_n_ln_n_for_dpimagebench_private_set():
    assert benchmark_delta() == pytest.approx(1 / (55000 * math.log(55000)))
    assert 1.6e-6 < benchmark_delta() < 1.7e-6
    assert DPIMAGEBENCH.n_synthetic == 60000 and DPIMAGEBENCH.n_val == 5000


def test_split_is_stratified_and_disjoint():
    labels = torch.arange(600) % 10
    data = ImageSet((torch.arange(600) % 256).to(torch.uint8).reshape(600, 1, 1, 1).expand(600, 1, 2, 2).clone(),
                    labels, 10, "x")
    train, val = split_synthetic(data, 100, seed=0)
    assert len(train) == 500 and len(val) == 100
    assert val.class_counts() == [10] * 10
    seen = torch.cat([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]]).long()
    assert sorted(seen.tolist()) == sorted((torch.arange(600) % 256).tolist())  # every image once


def test_score_reports_best_and_mean_over_classifiers_and_checks_the_size(mnist):
    _, test = mnist
    proto = Protocol(name="tiny", n_synthetic=1200, n_val=100, classifiers=(("cnn", 2), ("resnet", 1)))
    res = score(printed_digits(1200, seed=5, progress=False), test.subset(1000), proto, progress=False)
    accs = [res["oracle/accuracy_cnn"], res["oracle/accuracy_resnet"]]
    assert res["oracle/accuracy"] == max(accs) and res["oracle/accuracy_mean"] == pytest.approx(sum(accs) / 2)
    assert res["oracle/accuracy"] > 0.3  # printed digits carry real signal; chance is 0.1
    assert "not DP" in res["oracle/note"] and "tiny" in res["protocol"]
    with pytest.raises(ValueError, match="1200 synthetic images"):
        score(printed_digits(100, seed=5, progress=False), test.subset(100), proto, progress=False)
