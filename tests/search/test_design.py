"""Which design a sweep runs, and the refusals of what the slice argument does not cover."""

import pytest
import torch

from dpsearch.config import ConfigError
from dpsearch.data import ImageSet
from dpsearch.search.design import design_name, plan
from dpsearch.search.options import SweepOptions
from dpsearch.space import SearchSpace, load_space


def _private(n=3000):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n,), generator=g), 10, "toy")


def _space(**update) -> SearchSpace:
    raw = load_space("smoke").model_dump()
    raw.update(n_private=None, **update)
    return SearchSpace(**raw)


def test_the_design_follows_the_budget_flag():
    assert design_name(SweepOptions(eps=5)) == "per-trial"
    assert design_name(SweepOptions(eps_total=5)) == "slices"
    assert design_name(SweepOptions(eps_total=5, design="composed")) == "composed"
    with pytest.raises(ConfigError, match="--design composed needs --eps-total"):
        design_name(SweepOptions(eps=5, design="composed"))
    with pytest.raises(ConfigError, match="--design must be"):
        SweepOptions(eps_total=5, design="sideways").check()


def test_slices_give_each_part_its_own_records_and_the_trials_the_final_runs_q():
    # RDP calibrates in milliseconds; the PRV solve is covered in tests/privacy/test_report.py
    d = plan(SweepOptions(eps_total=4.0, trials=3), _space(accountant="rdp"), _private())
    sizes = d.slices["sizes"]
    assert d.name == "slices" and sum(sizes.values()) == 3000
    assert (len(d.trial_data), len(d.validation_data), len(d.final_data)) == (sizes["tuning"], sizes["validation"],
                                                                                sizes["final"])
    assert d.val_eps == d.final_eps == 4.0 and 0 < d.eps < 4.0  # trials compose to the total
    assert d.trial_batch_scale == pytest.approx(sizes["tuning"] / sizes["final"])
    assert d.delta == 1e-4  # one δ, from the whole private set (N = 3000)
    assert "disjoint slices" in d.describe()


def test_slices_refuse_what_the_argument_does_not_cover():
    with pytest.raises(ConfigError, match="gives the validation generator the whole --eps-total"):
        plan(SweepOptions(eps_total=4.0), _space(validation={"per_class": 10, "eps": 1.0}), _private())
    with pytest.raises(ConfigError, match="is not below 1/N of the tuning slice"):
        plan(SweepOptions(eps_total=4.0), _space(delta=0.05), _private())


def test_the_counting_objective_plans_one_count_per_trial_and_free_candidate():
    space = _space(validation={"objective": "count", "per_class": 10})
    # the trials' ε given (as on resume) so the test skips the slow solve, which the test above covers
    d = plan(SweepOptions(eps_total=4.0, trials=3), space, _private(), saved={"options": {"eps": 1.0}})
    c = d.slices["count"]
    assert c["queries"] == 3 + len(space.free.combinations())
    assert d.count is not None and d.count.holdout is d.validation_data and d.count.sigma == c["sigma"]
    from dpsearch.privacy.noisy_count import count_epsilon

    assert count_epsilon(c["sigma"], c["queries"], d.delta) == pytest.approx(4.0, rel=0.02)
    assert "Gaussian counts" in d.describe()
    # a resumed sweep keeps its σ and slices
    again = plan(SweepOptions(eps_total=4.0, trials=3), space, _private(),
                 saved={"slices": d.slices, "options": {"eps": d.eps}})
    assert again.count.sigma == d.count.sigma and len(again.validation_data) == len(d.validation_data)


def test_the_counting_objective_is_refused_where_no_records_are_held_out():
    space = _space(validation={"objective": "count", "per_class": 10})
    with pytest.raises(ConfigError, match="only a disjoint-slice search"):
        plan(SweepOptions(eps=4.0), space, _private())
    with pytest.raises(ConfigError, match="only a disjoint-slice search"):
        plan(SweepOptions(eps_total=4.0, design="composed"), space, _private())
    with pytest.raises(ConfigError, match="--scheduler none"):
        plan(SweepOptions(eps_total=4.0, scheduler="asha"), space, _private())
    with pytest.raises(ConfigError, match="private selection"):
        plan(SweepOptions(eps_total=4.0, private_selection="geometric", mean_trials=3, sampler="random"), space,
             _private())


def test_auto_counts_where_records_can_be_held_out_and_uses_the_generator_elsewhere():
    space = _space()  # objective: auto
    assert plan(SweepOptions(eps=4.0), space, _private()).count is None
    counted = plan(SweepOptions(eps_total=4.0), space, _private(), saved={"options": {"eps": 1.0}})
    assert counted.count is not None
    asha = plan(SweepOptions(eps_total=4.0, scheduler="asha"), space, _private(), saved={"options": {"eps": 1.0}})
    assert asha.count is None  # ASHA needs V's per-epoch loss
    # a sweep started with the generator resumes with it
    resumed = plan(SweepOptions(eps_total=4.0), space, _private(), saved={"options": {"eps": 1.0},
                                                                          "slices": asha.slices})
    assert resumed.count is None
