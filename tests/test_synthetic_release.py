import json

import numpy as np
import torch
from PIL import Image

from dpsearch.data import ImageSet, printed_digits
from dpsearch.synthetic_release import write_release


def test_release_has_npz_pngs_per_class_grid_and_a_card_with_the_guarantee(tmp_path):
    data = printed_digits(40, seed=2, progress=False)
    privacy = {"dp": True, "eps": 1.0, "delta": 1.67e-6, "accountant": "prv", "covers": "the whole search"}
    out = write_release(data, tmp_path / "rel", name="test", privacy=privacy, configuration={"layers": "1-7"},
                        oracle={"oracle/accuracy": 0.9}, progress=False)
    back = ImageSet.load(out / "synthetic.npz")
    assert torch.equal(back.images, data.images) and torch.equal(back.labels, data.labels)
    for c in range(10):
        files = sorted((out / "png" / str(c)).glob("*.png"))
        assert len(files) == 4
        first = (data.labels == c).nonzero().flatten()[0]
        assert np.array_equal(np.asarray(Image.open(files[0])), data.images[first, 0].numpy())
    assert (out / "grid.png").stat().st_size > 0
    card = json.loads((out / "card.json").read_text())
    assert card["privacy"]["eps"] == 1.0 and len(card["sha256"]) == 64 and card["n_images"] == 40
    text = (out / "DATA_CARD.md").read_text()
    assert "(ε = 1.000, δ = 1.67e-06)-DP" in text and "the whole search" in text
    assert "Oracle scores (not DP, chose nothing)" in text


def test_non_dp_release_says_so(tmp_path):
    out = write_release(printed_digits(20, progress=False), tmp_path / "r", name="ref",
                        privacy={"dp": False, "statement": "NOT DP"}, configuration={}, progress=False)
    assert "NOT differentially private" in (out / "DATA_CARD.md").read_text()


def test_the_card_of_a_sweep_trial_headlines_the_sweeps_figure_and_says_why_not_its_own(tmp_path):
    run = {"dp": True, "eps": 0.46, "delta": 1e-5, "accountant": "prv"}
    privacy = {"dp": True, "eps": 5.0, "delta": 1e-5, "accountant": "pld", "covers": "sweep s: the whole search",
               "sweep": {"name": "s", "trial": "t3", "figure": "released"}, "run": run,
               "warnings": ["the tuning part costs more than planned"]}
    out = write_release(printed_digits(20, progress=False), tmp_path / "r", name="t3", privacy=privacy,
                        configuration={}, progress=False, pngs=False)
    text = (out / "DATA_CARD.md").read_text()
    assert "**Privacy guarantee:** (ε = 5.000, δ = 1e-05)-DP" in text and "sweep s: the whole search" in text
    assert "own fine-tune was (ε = 0.460, δ = 1e-05)-DP, but it was trial t3 of sweep s" in text
    assert "**WARNING:** the tuning part costs more than planned" in text
    selected = {**privacy, "sweep": {"name": "s", "selected": True}}  # private selection: no trial id
    text = (write_release(printed_digits(20, progress=False), tmp_path / "r2", name="x", privacy=selected,
                          configuration={}, progress=False, pngs=False) / "DATA_CARD.md").read_text()
    assert "it was the selected trial of sweep s" in text and "t3" not in text
