"""The final stage's release: the free choice's sample at the chosen setting is part of it, the rest is sampled."""

import json
import re

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


RUN = {"sigma": 0.9, "q": 0.25, "steps": 4}  # the selected trial's mechanism, as its row and its record hold it


def _trial_checkpoint(model_dir, out):
    """A stored trial as the trainable writes one: model/, privacy.json and a manifest. One frozen weight (outside
    every attention module, so no final run trains it) is set to a marker value that only this checkpoint holds."""
    from dpsearch.checkpoints import write_manifest
    from dpsearch.models import save_ldm

    model = load_ldm(model_dir)
    conv = model.unet.conv_in.weight
    with torch.no_grad():
        conv.fill_(0.125)
    save_ldm(model, out / "model", extra={"privacy": {"eps": 1.0}})
    (out / "privacy.json").write_text(json.dumps({**RUN, "eps": 1.0, "delta": 1e-5, "sweep": {"name": "t"}}))
    write_manifest(out)
    return conv.detach().clone()


def test_a_warm_started_final_run_starts_from_the_selected_trials_weights_and_a_cold_one_from_the_pretrained(
        tiny_model_dir, tmp_path):
    """--warm-start: the final run's starting weights are the selected trial's stored ones (verified checkpoint),
    not the pretrained model's; its DP record is its own run's, with where it started stated beside it."""
    from types import SimpleNamespace

    from dpsearch.data.printed_digits import printed_digits
    from dpsearch.search.final import START_PRETRAINED, START_TRIAL, final_model
    from dpsearch.search.model_files import pack_model

    marker = _trial_checkpoint(tiny_model_dir, tmp_path / "trial")
    pretrained = load_ldm(tiny_model_dir).unet.conv_in.weight.detach()
    assert not torch.equal(marker, pretrained)
    best = {"checkpoint": str(tmp_path / "trial"), **RUN,
            "config": {"layers": "2-3", "clip": 0.1, "batch": 20, "lr": 1e-3, "epochs": 1}}
    design = SimpleNamespace(retrains=True, final_eps=3.0, delta=1e-4, n_public={"final": 60},
                             final_data=printed_digits(60, progress=False))
    space, files = load_space("smoke"), pack_model(tiny_model_dir)
    for warm, start, want in ((True, START_TRIAL, marker), (False, START_PRETRAINED, pretrained)):
        store = Store(tmp_path / f"arm-{warm}" / "t").child("dpsearch")  # as run_final: <storage>/<sweep>/dpsearch
        model, privacy, _ = final_model(files, space, best, design, 0, "cpu", store, warm_start=warm)
        assert torch.equal(model.unet.conv_in.weight, want)  # frozen in the final run: what it started from
        assert privacy["start"] == start and 0 < privacy["eps"] <= 3.0 and privacy["n"] == 60
        assert json.loads(store.read_text("final/trained/privacy.json"))["start"] == start
    import pytest

    from dpsearch.config import ConfigError

    # a start that is not the selected row's tuning-slice run is refused before anything is trained
    for other, what in (({**best, "sigma": 1.2}, "sigma"), (best, "sweep 't' (this is 'u')")):
        store = Store(tmp_path / "arm-other" / ("t" if what == "sigma" else "u")).child("dpsearch")
        with pytest.raises(ConfigError, match=re.escape(what)):
            final_model(files, space, other, design, 0, "cpu", store, warm_start=True)
        assert not store.exists("attempts.json") and not store.exists("final")
    (tmp_path / "trial" / "model" / "dpsearch_model.json").write_text("{}")  # a damaged checkpoint is refused
    with pytest.raises(ConfigError, match="dpsearch_model.json"):
        final_model(files, space, best, design, 0, "cpu", Store(tmp_path / "bad" / "t").child("dpsearch"),
                    warm_start=True)
