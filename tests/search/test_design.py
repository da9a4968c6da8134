"""Which design a sweep runs, and the refusals of what the slice argument does not cover."""

import pytest
import torch

from dpsearch.config import ConfigError, default_delta
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
    raw.update({"n_private": None, "n_public": None, **update})  # planned from the toy data below
    return SearchSpace(**raw)


def test_the_design_follows_the_budget_flag():
    assert design_name(SweepOptions(eps=5)) == "per-trial"
    assert design_name(SweepOptions(eps_total=5)) == "slices"
    assert design_name(SweepOptions(eps_total=5, design="composed")) == "composed"
    with pytest.raises(ConfigError, match="--design composed needs --eps "):
        design_name(SweepOptions(eps=5, design="composed"))
    with pytest.raises(ConfigError, match="--design must be"):
        SweepOptions(eps_total=5, design="sideways").check()


def test_slices_give_each_part_its_own_records_and_the_trials_the_final_runs_q():
    # RDP calibrates in milliseconds; the PRV solve is covered in tests/privacy/test_report.py
    d = plan(SweepOptions(eps_total=4.0, trials=3), _space(accountant="rdp"), _private())
    planned, rule = d.slices["planned"], d.slices["rule"]
    assert d.name == "slices" and abs(sum(planned.values()) - 3000) <= 2
    assert len(d.trial_data) + len(d.validation_data) + len(d.final_data) == 3000
    assert "sizes" not in d.slices  # the exact slice counts are not stored or published
    assert d.n_public == planned
    assert d.val_eps == d.final_eps == 4.0 and 0 < d.eps < 4.0  # trials compose to the total
    assert d.trial_batch_scale == pytest.approx(rule["tuning"] / rule["final"])  # from the public fractions
    assert d.delta == default_delta(3000)  # one δ, from the whole private set's public N
    assert "disjoint slices" in d.describe() and str(len(d.final_data)) not in d.describe()


def test_small_data_gets_a_validation_slice_that_can_rank_and_a_resume_keeps_the_recorded_shares():
    space = _space(accountant="rdp", slices={"tuning": 0.1, "validation": 0.05, "final": 0.85, "min_validation": 600})
    d = plan(SweepOptions(eps_total=4.0, trials=3), space, _private())
    assert d.slices["rule"]["validation"] == pytest.approx(0.2) and d.slices["rule"]["final"] == pytest.approx(0.7)
    assert d.slices["planned"]["validation"] == 600 and d.count.n_public == 600  # the counts' public denominator
    assert d.trial_batch_scale == pytest.approx(0.1 / 0.7)
    roomier = _space(accountant="rdp", slices={"tuning": 0.1, "validation": 0.05, "final": 0.85, "min_validation": 0})
    again = plan(SweepOptions(eps_total=4.0, trials=3), roomier, _private(), saved={"slices": d.slices})
    assert again.slices["rule"] == d.slices["rule"]  # a resume cuts the slices it recorded, not the space's


def test_the_solve_a_new_sweep_looks_up_is_the_one_it_plans_when_the_validation_share_grows():
    from dpsearch.search.design import _tuning_solve, slice_solve_args

    space = _space(accountant="rdp", n_public=60000, n_private=3000,
                   slices={"tuning": 0.1, "validation": 0.05, "final": 0.85, "min_validation": 600})
    d = plan(SweepOptions(eps_total=4.0, trials=3), space, _private())
    assert d.slices["rule"]["validation"] == pytest.approx(0.2)  # the floor applied
    assert slice_solve_args(space, 4.0, 3) == _tuning_solve(d.slices["planned"], 4.0, 3, d.trial_batch_scale, d.delta)


def test_a_reference_batch_no_slice_can_hold_is_refused_before_the_solve():
    space = _space(accountant="rdp", reference={**load_space("smoke").reference.model_dump(), "batch": 2900})
    with pytest.raises(ConfigError, match="batch size 2900 is larger than the private set's"):
        plan(SweepOptions(eps_total=4.0, trials=3), space, _private())


def _tuning_plans(d, space):
    """(q, batch, σ) of every mechanism a tuning trial of this design can run."""
    from dpsearch.privacy.dpsgd import plan_privacy

    out = []
    for b in space.params.batch.values():
        for e in space.params.epochs.values():
            cfg = space.finetune_config({"layers": "1-1", "clip": 1.0, "lr": 1e-3, "batch": b, "epochs": e}, d.eps,
                                        batch_scale=d.trial_batch_scale, delta=d.delta, n_public=d.n_public["tuning"])
            p = plan_privacy(cfg, len(d.trial_data))
            out.append((p.q, cfg.batch, p.sigma, p.steps))
    return out


def test_adding_a_record_to_the_final_slice_leaves_the_tuning_trials_mechanisms_unchanged():
    """Add/remove adjacency: the neighbour's extra record lands in the final slice; every tuning trial's q, batch
    and σ must be what they were (they are planned from the declared public N and the rule's fractions)."""
    from dpsearch.privacy.slices import SliceRule, record_uniforms

    space = _space(accountant="rdp", n_public=3000)
    data = _private()
    d = plan(SweepOptions(eps_total=4.0, trials=3), space, data)
    rule = SliceRule(**d.slices["rule"])
    g = torch.Generator().manual_seed(7)
    while True:  # a record that the rule puts in the final slice
        extra = ImageSet(torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (1,), generator=g), 10, "x")
        if record_uniforms(extra, rule.salt)[0] >= rule.tuning + rule.validation:
            break
    bigger = ImageSet(torch.cat([extra.images, data.images]), torch.cat([extra.labels, data.labels]), 10, "toy+1")
    d2 = plan(SweepOptions(eps_total=4.0, trials=3), space, bigger, saved={"slices": {"rule": d.slices["rule"]}})
    assert len(d2.final_data) == len(d.final_data) + 1 and torch.equal(d2.trial_data.images, d.trial_data.images)
    assert d2.eps == d.eps and d2.delta == d.delta and d2.trial_batch_scale == d.trial_batch_scale
    assert _tuning_plans(d2, space) == _tuning_plans(d, space)
    assert d2.count is None or (d2.count.sigma == d.count.sigma and d2.count.n_public == d.count.n_public)


def test_without_a_declared_n_the_plan_reads_n_and_the_fractions_only():
    """Under the usual convention (N public), two data sets of the same N whose slices differ in size plan alike."""
    space = _space(accountant="rdp")
    d1 = plan(SweepOptions(eps_total=4.0, trials=3), space, _private())
    for seed in range(1, 6):  # the slice counts are random (a fresh salt): one of a few other data sets differs
        g = torch.Generator().manual_seed(seed)
        other = ImageSet(torch.randint(0, 256, (3000, 1, 28, 28), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (3000,), generator=g), 10, "other")
        d2 = plan(SweepOptions(eps_total=4.0, trials=3), space, other, saved={"slices": {"rule": d1.slices["rule"]}})
        if len(d2.trial_data) != len(d1.trial_data):
            break
    assert len(d2.trial_data) != len(d1.trial_data)  # the exact counts differ ...
    assert _tuning_plans(d2, space) == _tuning_plans(d1, space)  # ... the mechanisms do not


def test_n_private_outside_slices_is_a_hash_share_planned_from_n():
    """--n-private under the per-trial design: a record-level share (not a seeded subset of positions), and the
    trials plan from n, not from the share's exact count."""
    space = _space(accountant="rdp", n_private=500)
    data = _private()
    d = plan(SweepOptions(eps=4.0), space, data)
    assert d.n_public["tuning"] == 500 and d.share["keep"] == pytest.approx(500 / 3000)
    assert 400 < len(d.trial_data) < 600 and d.delta == default_delta(500)
    extra = ImageSet(torch.full((1, 1, 28, 28), 7, dtype=torch.uint8), torch.tensor([3]), 10, "x")
    bigger = ImageSet(torch.cat([extra.images, data.images]), torch.cat([extra.labels, data.labels]), 10, "toy+1")
    d2 = plan(SweepOptions(eps=4.0), space, bigger, saved={"share": d.share})
    a = {bytes(x.numpy()) for x in d.trial_data.images}
    b = {bytes(x.numpy()) for x in d2.trial_data.images}
    assert len(a ^ b) <= 1  # inserting one record at the start changes at most that record of the share


def test_slices_refuse_what_the_argument_does_not_cover():
    with pytest.raises(ConfigError, match="gives the validation generator the whole --eps on"):
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
    with pytest.raises(ConfigError, match="--private-selection cannot run on disjoint slices"):
        plan(SweepOptions(eps_total=4.0, private_selection="geometric", mean_trials=3, sampler="random"), space,
             _private())
    # the default space (objective auto) too: slices + private selection is refused, whatever scores the trials
    with pytest.raises(ConfigError, match="--private-selection cannot run on disjoint slices"):
        plan(SweepOptions(eps_total=4.0, private_selection="geometric", mean_trials=3, sampler="random"), _space(),
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


def test_each_design_is_one_class_chosen_once_from_the_registry():
    from dpsearch.search.design import DESIGNS, Composed, PerTrial, Slices

    assert DESIGNS == {"per-trial": PerTrial, "composed": Composed, "slices": Slices}
    d = plan(SweepOptions(eps=2.0), _space(accountant="rdp"), _private())
    assert type(d) is PerTrial and not d.retrains and not d.counts
    assert d.record()["design"] == "per-trial" and d.n_recorded() == 3000
    s = plan(SweepOptions(eps_total=4.0, trials=3), _space(accountant="rdp"), _private())
    assert type(s) is Slices and s.retrains and s.counts  # objective auto → counts under slices
    assert s.record()["n_private"] == 3000 and len(s.fingerprint_data(_private())) == 3000
