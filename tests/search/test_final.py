"""The final stage's release: the free choice's sample at the chosen setting is part of it, the rest is sampled."""

import json

import numpy as np
import torch

from dpsearch.data import ImageSet
from dpsearch.models import load_ldm
from dpsearch.sample import sample
from dpsearch.search.final import _with_reused, release
from dpsearch.space import load_space
from dpsearch.storage import Store


def _set(per_class: int, value_base: int, k: int = 3) -> ImageSet:
    labels = torch.arange(k).repeat_interleave(per_class)
    images = (value_base + torch.arange(len(labels))).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return ImageSet(images, labels, k, "synthetic")


def test_reused_images_come_first_in_each_class_and_the_rest_follows():
    reuse, rest = _set(4, 0), _set(2, 100)
    out = _with_reused(reuse, 3, rest)
    assert out.class_counts() == [5, 5, 5]
    assert out.labels.tolist() == sorted(out.labels.tolist())  # grouped by class, as sample() orders them
    firsts = out.images[:, 0, 0, 0].tolist()
    # class 0: the first 3 of reuse's class 0 (0, 1, 2; not 3), then rest's class 0 (100, 101)
    assert firsts[:5] == [0, 1, 2, 100, 101]
    assert firsts[5:10] == [4, 5, 6, 102, 103]
    assert _with_reused(reuse, 2, None).class_counts() == [2, 2, 2]


def test_the_release_holds_the_free_choices_sample_and_samples_only_the_rest(tiny_model_dir, tmp_path):
    space = load_space("smoke")  # release n = 100: 10 per class
    model = load_ldm(tiny_model_dir)
    chosen = {"guidance": 1.0, "steps": 2}
    kept = sample(model, space.sample.model_copy(update={**chosen, "per_class": 4, "seed": 31}), progress=False)
    released = {"eps": 5.0, "delta": 1e-5, "accountant": "prv", "covers": "all", "name": "t", "design": "d"}
    store = Store(tmp_path / "sweep")
    n = release(model, {"eps": 5.0}, released, space, {"layers": "1-2"}, chosen, 0, store, reuse=kept)
    assert n == 100
    rel = tmp_path / "sweep" / "final" / "release"
    card = json.loads((rel / "card.json").read_text())
    assert card["n_images"] == 100 and card["per_class"] == 10
    assert card["configuration"]["sample"]["per_class"] == 6  # only the rest was sampled
    assert card["configuration"]["sample_reused_from_free_choice"] == {"per_class": 4, "seed": 31}
    z = np.load(rel / "synthetic.npz")
    assert np.bincount(z["labels"]).tolist() == [10] * 10
    got = z["images"][z["labels"] == 0]
    want = kept.images[kept.labels == 0].numpy()
    assert (got[:4] == want).all() and not (got[4:8] == want).all()
