"""Disjoint slices: one part per record by a rule that reads that record alone, and the accounting of the
released model (the largest part, never more than the total)."""

import pytest
import torch

from dpsearch.config import ConfigError
from dpsearch.data import ImageSet
from dpsearch.privacy.slices import PARTS, PartGuarantee, SliceRule, released_guarantee, split


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n,), generator=g), 10, "toy")


def _keys(s: ImageSet) -> set:
    return {(int(y), x.numpy().tobytes()) for x, y in zip(s.images, s.labels)}


def test_every_record_is_in_exactly_one_part_in_about_the_stated_shares():
    data = _data(4000)
    parts = split(data, SliceRule(0.1, 0.1, 0.8, salt="s"))
    assert sum(len(p) for p in parts.values()) == 4000
    keys = [_keys(parts[p]) for p in PARTS]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert abs(len(parts["tuning"]) - 400) < 80 and abs(len(parts["final"]) - 3200) < 120


def test_adding_a_record_changes_only_the_part_it_lands_in():
    """The add/remove neighbour: D and D ∪ {x} give identical parts except one, which gains x."""
    data = _data(500)
    extra = _data(1, seed=9)
    bigger = ImageSet(torch.cat([extra.images, data.images]), torch.cat([extra.labels, data.labels]), 10, "toy+1")
    rule = SliceRule(0.2, 0.2, 0.6, salt="public")
    a, b = split(data, rule), split(bigger, rule)
    changed = [p for p in PARTS if _keys(a[p]) != _keys(b[p])]
    assert len(changed) == 1
    assert _keys(b[changed[0]]) - _keys(a[changed[0]]) == _keys(extra)


def test_the_salt_changes_the_slices_and_the_same_salt_repeats_them():
    data = _data(1000)
    one = split(data, SliceRule(salt="a"))["tuning"]
    assert _keys(one) == _keys(split(data, SliceRule(salt="a"))["tuning"])
    assert _keys(one) != _keys(split(data, SliceRule(salt="b"))["tuning"])
    assert SliceRule.new().salt != SliceRule.new().salt


def test_a_cap_leaves_a_record_level_share_untouched():
    data = _data(4000)
    rule = SliceRule(salt="c")
    capped = split(data, rule, keep=0.25)
    assert 800 < sum(len(p) for p in capped.values()) < 1200 and 60 < len(capped["tuning"]) < 140
    extra = _data(1, seed=5)  # still one part per record: a neighbour changes at most one part
    bigger = ImageSet(torch.cat([data.images, extra.images]), torch.cat([data.labels, extra.labels]), 10, "toy+1")
    again = split(bigger, rule, keep=0.25)
    assert sum(_keys(capped[p]) != _keys(again[p]) for p in PARTS) <= 1


@pytest.mark.parametrize("fractions, message", [
    ((0.1, 0.1, 0.7), "sum to 1"), ((0.0, 0.2, 0.8), "in \\(0, 1\\)"), ((0.5, 0.5, 0.0), "in \\(0, 1\\)")])
def test_fractions_the_argument_does_not_cover_are_refused(fractions, message):
    with pytest.raises(ConfigError, match=message):
        SliceRule(*fractions)


def test_an_empty_part_is_refused():
    with pytest.raises(ConfigError, match="slice of toy is empty"):
        split(_data(5), SliceRule(0.01, 0.01, 0.98, salt="x"))


def test_the_released_guarantee_is_the_largest_part_and_says_when_it_passes_the_total():
    parts = [PartGuarantee("tuning", 0.97, 1e-5, "pld"), PartGuarantee("validation", 0.999, 1e-5, "prv"),
             PartGuarantee("final", 0.995, 1e-5, "prv")]
    g, warning = released_guarantee(parts, 1.0)
    assert (g.eps, g.delta, warning) == (0.999, 1e-5, None)
    # the card names the composition and each part's accountant, not one accountant for a figure made of three
    assert g.accountant == ("parallel composition over disjoint slices: the largest of the 3 parts (tuning 0.970 by "
                            "pld, validation 0.999 by prv, final 0.995 by prv)")
    g, warning = released_guarantee(parts[:2] + [PartGuarantee("final", 1.2, 1e-5, "prv")], 1.0)
    assert g.eps == 1.2 and "the final part costs ε = 1.2000 > the total 1" in warning
    with pytest.raises(ConfigError, match="share one δ"):
        released_guarantee(parts[:2] + [PartGuarantee("final", 0.9, 1e-6, "prv")], 1.0)
    with pytest.raises(ConfigError, match="exactly the parts"):
        released_guarantee(parts[:2], 1.0)


def test_the_slices_report_composes_the_tuning_trials_and_takes_the_largest_part():
    """The accounting end to end, recomputed independently: K trials on the tuning slice composed by
    dp-accounting's PLD (one mechanism), the validation generator and the final run on their own slices."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    from dpsearch.privacy.accounting import calibrate_sigma, poisson_plan
    from dpsearch.privacy.report import solve_per_trial_eps, stored_sweep_report
    from dpsearch.space import SearchSpace, load_space, scaled_batch

    raw = load_space("smoke").model_dump()
    raw["params"].update(batch={"value": 800}, epochs={"value": 2})  # one mechanism: PLD composes it
    space = SearchSpace(**raw)
    sizes, scale, delta, total, k = {"tuning": 6000, "validation": 6000, "final": 48000}, 6000 / 48000, 1e-5, 2.0, 4
    per, _ = solve_per_trial_eps(space, sizes["tuning"], total, trials=k, with_validation=False, batch_scale=scale,
                                 delta=delta, rel_tol=0.05, cache=False)
    q, steps = poisson_plan(sizes["tuning"], scaled_batch(800, scale), 2)
    sigma = calibrate_sigma(per, delta, q, steps, space.accountant)
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps), k)
    independent = acc.get_epsilon(delta)
    saved = {"options": {"name": "s", "eps": per, "eps_total": total, "trials": k}, "space": space.model_dump(),
             "design": "slices", "delta": delta,
             "slices": {"sizes": sizes, "trial_batch_scale": scale, "rule": {}, "keep": 1.0}}
    vp = {"eps": 1.99, "delta": delta, "accountant": "prv"}
    rep = stored_sweep_report(saved, [], vp, [], {"privacy": {"eps": 1.98, "delta": delta, "accountant": "prv",
                                                              "sigma": 1.0, "q": 0.1, "steps": 10, "layers": "1-7"}})
    tuning = rep["released"]["parts"][0]
    assert tuning["eps"] == pytest.approx(independent, rel=0.02) and tuning["eps"] <= total
    assert rep["released"]["eps"] == max(p["eps"] for p in rep["released"]["parts"]) <= total
    largest = max(rep["released"]["parts"], key=lambda p: p["eps"])
    assert largest["accountant"] in rep["released"]["accountant"] and "over_total" not in rep
    assert rep["released"]["accountant"].startswith("parallel composition over disjoint slices: the largest of the 3")
    assert "parallel composition over disjoint slices" in rep["statement"]
    # trials started beyond the planned K count: the tuning part grows past the total, and the report says so
    rep8 = stored_sweep_report(saved, [], vp, [f"t{i}" for i in range(8)], None)
    assert rep8["released"]["eps"] == rep8["released"]["parts"][0]["eps"] > total
    assert "the tuning part costs" in rep8["over_total"]


def test_under_the_counting_objective_the_validation_part_is_the_counts_made():
    """One count per trial started and per planned free candidate, composed by PLD on the validation slice."""
    from dpsearch.privacy.noisy_count import count_epsilon, count_sigma
    from dpsearch.privacy.report import format_report, stored_sweep_report
    from dpsearch.space import SearchSpace, load_space

    raw = load_space("smoke").model_dump()
    raw["params"].update(batch={"value": 800}, epochs={"value": 2})
    space = SearchSpace(**raw)
    delta, total, k, free = 1e-5, 2.0, 4, len(space.free.combinations())
    sigma = count_sigma(k + free, total, delta)
    saved = {"options": {"name": "s", "eps": 0.5, "eps_total": total, "trials": k}, "space": space.model_dump(),
             "design": "slices", "delta": delta,
             "slices": {"sizes": {"tuning": 6000, "validation": 3000, "final": 51000}, "trial_batch_scale": 6000 / 51000,
                        "rule": {}, "keep": 1.0, "count": {"sigma": sigma, "queries": k + free}}}
    vp = {"objective": "count", "eps": total, "delta": delta, "accountant": "pld", "sigma": sigma,
          "queries": k + free, "n": 3000}
    rep = stored_sweep_report(saved, [], vp, [], None)
    val = rep["released"]["parts"][1]
    assert val["part"] == "validation" and val["eps"] == pytest.approx(total, rel=0.02) and val["eps"] <= total * 1.001
    assert "Gaussian counts" in rep["statement"] and "planned 3000 held-out" in format_report(rep)
    # two trials restarted beyond the plan: two more counts, the validation part passes the total and it is said
    rep6 = stored_sweep_report(saved, [], vp, [f"t{i}" for i in range(k + 2)], None)
    assert rep6["released"]["parts"][1]["eps"] == pytest.approx(count_epsilon(sigma, k + 2 + free, delta), rel=1e-6)
    assert rep6["released"]["parts"][1]["eps"] > total and "validation part costs" in rep6["over_total"]
    # a final stage that ran its free candidates twice (it died after counting): twice the free counts
    again = stored_sweep_report(saved, [], vp, [], None, {"free": 2})
    assert again["released"]["parts"][1]["eps"] == pytest.approx(count_epsilon(sigma, k + 2 * free, delta), rel=1e-6)
    assert "validation part costs" in again["over_total"]


def test_a_final_run_trained_twice_is_composed_over_both_runs():
    """A final stage that died while training and ran again drew the final slice twice: the final part is the
    composition of both runs (attempts.json), never the one record of the run that finished."""
    from dpsearch.privacy.report import stored_sweep_report
    from dpsearch.privacy.search_cost import Mechanism
    from dpsearch.space import load_space

    space = load_space("smoke")
    delta, total = 1e-5, 2.0
    saved = {"options": {"name": "s", "eps": 0.5, "eps_total": total, "trials": 2}, "space": space.model_dump(),
             "design": "slices", "delta": delta,
             "slices": {"planned": {"tuning": 6000, "validation": 3000, "final": 51000}, "trial_batch_scale": 6000 / 51000,
                        "rule": {}, "keep": 1.0}}
    vp = {"eps": 1.99, "delta": delta, "accountant": "prv", "sigma": 1.0, "q": 0.01, "steps": 10}
    fp = {"eps": 1.98, "delta": delta, "accountant": "prv", "sigma": 2.0, "q": 0.05, "steps": 200, "layers": "1-7"}
    once = stored_sweep_report(saved, [], vp, [], {"privacy": fp}, {"final": 1})
    assert once["released"]["parts"][2]["eps"] == 1.98
    twice = stored_sweep_report(saved, [], vp, [], {"privacy": fp}, {"final": 2})
    final = twice["released"]["parts"][2]
    assert final["eps"] == pytest.approx(Mechanism(2.0, 0.05, 200).pld_eps(2, delta)) and final["eps"] > 1.98
    assert "2 runs composed" in final["accountant"]
    assert "configuration trained 2 times (runs composed)" in twice["statement"]
    assert "configuration trained once, (ε = 1.980)" in once["statement"]
    # before the rerun has finished: the space's worst final mechanism at the total, composed twice
    pending = stored_sweep_report(saved, [], vp, [], None, {"final": 2})
    assert pending["released"]["parts"][2]["eps"] > total and "final part costs" in pending["over_total"]


def test_an_n_private_share_changes_by_at_most_the_record_inserted(mnist):
    """--n-private under add/remove, on real MNIST records: inserting one record at the start of the data changes
    at most that record of the share (a seeded subset of positions changes hundreds: the reason for the rule)."""
    from dpsearch.data import ImageSet
    from dpsearch.privacy.slices import hash_share, share_of, subset_salt

    train = mnist[0].take(torch.arange(5000), "mnist[:5000]")
    new = mnist[0].take(torch.tensor([59999]), "one more")
    bigger = ImageSet(torch.cat([new.images, train.images]), torch.cat([new.labels, train.labels]), 10, "mnist+1")
    keep = share_of(1000, len(train))
    before = {bytes(x.numpy()) for x in hash_share(train, keep, subset_salt(0)).images}
    after = {bytes(x.numpy()) for x in hash_share(bigger, keep, subset_salt(0)).images}
    assert len(before ^ after) <= 1 and 850 < len(before) < 1150
    positional = {bytes(x.numpy()) for x in train.subset(1000, seed=0).images}
    shifted = {bytes(x.numpy()) for x in bigger.subset(1000, seed=0).images}
    assert len(positional ^ shifted) > 100
