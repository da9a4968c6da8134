"""The whole search's guarantee: closed forms of repeat-and-select, composition, and the worst curve."""

import math

import numpy as np
import pytest

from dpsearch.privacy.search_cost import (ORDERS, Mechanism, rdp_to_dp, repeat_and_select, repeat_and_select_event_eps,
                                          search_guarantee, worst_curve)


@pytest.mark.parametrize("selection, factor", [("geometric", 3.0), ("logarithmic", 2.0)])
@pytest.mark.parametrize("eps", [0.5, 1.0])
def test_repeat_and_select_of_a_pure_dp_trial_matches_the_closed_forms(selection, factor, eps):
    # Pure ε-DP means RDP ≤ ε at every order; Papernot & Steinke Cor. 3 (geometric K: 3ε) and
    # Liu & Talwar (logarithmic K: 2ε) are the limits at large order.
    pure = np.full(len(ORDERS), eps)
    out = repeat_and_select(pure, mean=10, selection=selection)
    assert out[-1] == pytest.approx(factor * eps, rel=2e-3)
    assert np.all(out >= eps)  # selecting never costs less than one run


def test_worst_curve_bound_equals_the_public_event_path_for_one_mechanism():
    m = Mechanism(sigma=1.0, q=0.01, steps=200)
    via_curve = rdp_to_dp(repeat_and_select(m.rdp(), 8, "geometric"), 1e-5)[0]
    assert via_curve == pytest.approx(repeat_and_select_event_eps(m, 8, "geometric", 1e-5), rel=1e-9)


def test_worst_curve_is_pointwise_max_and_dominates_each_member():
    a, b = Mechanism(0.7, 1 / 120, 120), Mechanism(1.6, 1 / 30, 90)
    w = worst_curve([a, b])
    assert np.all(w >= a.rdp()) and np.all(w >= b.rdp())
    assert np.all((w == a.rdp()) | (w == b.rdp()))


def test_adaptive_composition_grows_with_trials_and_is_below_naive_eps_times_k():
    m = Mechanism(0.66, 1 / 118, 1180)
    one = rdp_to_dp(m.rdp(), 1e-5)[0]
    g8 = search_guarantee([m], 1e-5, None, trials=8)
    g2 = search_guarantee([m], 1e-5, None, trials=2)
    assert one < g2.eps < g8.eps < 8 * one
    assert g8.trial_eps_worst == pytest.approx(one)


def test_validation_generator_is_composed_in():
    m = Mechanism(1.0, 0.01, 300)
    without = search_guarantee([m], 1e-5, None, trials=4)
    with_v = search_guarantee([m], 1e-5, m, trials=4)
    five = search_guarantee([m], 1e-5, None, trials=5)
    assert with_v.eps == pytest.approx(five.eps)  # validation = one more run of the same mechanism
    assert with_v.eps > without.eps and with_v.validation_eps is not None


def test_private_selection_beats_composition_for_many_trials():
    m = Mechanism(1.0, 0.01, 300)
    comp = search_guarantee([m], 1e-5, None, trials=20)
    sel = search_guarantee([m], 1e-5, None, selection="geometric", mean_trials=20)
    assert sel.eps < comp.eps and sel.mode == "geometric" and sel.trials is None


@pytest.mark.parametrize("bad", [dict(selection="uniform", mean_trials=5), dict(selection="geometric", mean_trials=0.5),
                                 dict(selection="geometric", mean_trials=math.inf)])
def test_bad_selection_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        search_guarantee([Mechanism(1.0, 0.01, 10)], 1e-5, None, **bad)


def test_adaptive_search_of_one_mechanism_uses_pld_when_tighter_and_keeps_rdp_for_several():
    m = Mechanism(sigma=1.0, q=0.02, steps=200)
    g = search_guarantee([m], 1e-5, None, trials=4)
    assert g.accountant == "pld (dp-accounting)" and g.eps < g.eps_rdp
    assert g.eps == pytest.approx(m.pld_eps(4, 1e-5), rel=1e-9)
    # two cells: an adaptive searcher can mix them, so only RDP's worst curve is sound
    g2 = search_guarantee([m, Mechanism(sigma=1.2, q=0.04, steps=100)], 1e-5, None, trials=4)
    assert g2.accountant == "rdp (dp-accounting)" and g2.eps_rdp is None
