"""The per-trial ε search's cache: a remembered answer is used only once the accountant has checked it."""

from __future__ import annotations

import json

import pytest

from dpsearch.privacy import solve_cache
from dpsearch.privacy.report import solve_per_trial_eps, solve_plan
from dpsearch.space import load_space

# RDP: cheap to calibrate, and the cache does not depend on the accountant
ARGS = dict(n=3000, eps_total=4.0, trials=4, with_validation=False, batch_scale=0.5, delta=1e-5, rel_tol=0.05)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSEARCH_HOME", str(tmp_path))
    return tmp_path


def _space():
    return load_space("smoke").model_copy(update={"accountant": "rdp"})


def _entries(home) -> dict:
    return json.loads((home / solve_cache.FILE).read_text())


def test_an_answer_is_remembered_and_reused_after_the_accountant_checks_it(home, monkeypatch):
    per, g = solve_per_trial_eps(_space(), **ARGS)
    assert g.eps <= 4.0
    k = solve_cache.key(**solve_plan(_space(), **ARGS))
    assert _entries(home)[k]["per_trial_eps"] == per
    import dpsearch.privacy.report as report

    calls = []
    real = report.guarantee_for
    monkeypatch.setattr(report, "guarantee_for", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    again, g2 = solve_per_trial_eps(_space(), **ARGS)
    assert again == per and g2.eps == pytest.approx(g.eps)
    assert len(calls) == 1  # one check instead of the search's ~10 evaluations


def test_a_remembered_answer_that_breaks_the_total_is_thrown_away(home):
    per, _ = solve_per_trial_eps(_space(), cache=False, **ARGS)
    plan = solve_plan(_space(), **ARGS)
    k = solve_cache.key(**plan)
    solve_cache.store(k, 4.0, plan)  # every trial at the whole total: 4 of them compose far above it
    got, g = solve_per_trial_eps(_space(), **ARGS)
    assert got == pytest.approx(per) and g.eps <= 4.0
    assert _entries(home)[k]["per_trial_eps"] == pytest.approx(per)  # the bad entry is replaced


def test_the_key_follows_every_public_number_of_the_plan():
    base = solve_cache.key(**solve_plan(_space(), **ARGS))
    for change in ({"eps_total": 4.5}, {"trials": 5}, {"delta": 2e-5}, {"n": 3100}, {"batch_scale": 0.25}):
        assert solve_cache.key(**solve_plan(_space(), **(ARGS | change))) != base, change
    assert solve_cache.key(**solve_plan(load_space("smoke"), **ARGS)) != base  # the accountant
    assert solve_cache.key(**solve_plan(_space(), **ARGS)) == base


def test_an_unreadable_cache_only_costs_the_search(home):
    (home / solve_cache.FILE).write_text("{not json")
    per, g = solve_per_trial_eps(_space(), **ARGS)
    assert g.eps <= 4.0 and per in [e["per_trial_eps"] for e in _entries(home).values()]


def test_the_main_job_finds_its_answer_shipped_and_it_is_the_search_s():
    """`dpsearch sweep --eps 5` on the shipped space: the shipped per-trial ε meets the total and 2% more does
    not (so it is the bisection's answer to its 1% tolerance, not merely a safe one)."""
    from dpsearch.privacy.report import guarantee_for
    from dpsearch.search.design import slice_solve_args

    space = load_space("mnist")
    args = slice_solve_args(space, 5.0, 8)
    per = json.loads(solve_cache.SHIPPED.read_text())[solve_cache.key(**solve_plan(space, **args))]["per_trial_eps"]

    def total(e):
        return guarantee_for(space, e, args["n"], None, trials=8, batch_scale=args["batch_scale"],
                             delta=args["delta"]).eps

    assert total(per) <= 5.0 < total(per * 1.02)


def test_entries_no_search_would_give_are_skipped_and_the_search_runs(home):
    plan = solve_plan(_space(), **ARGS)
    k = solve_cache.key(**plan)
    for bad in (True, -1.0, float("nan"), "1.0"):
        solve_cache.store(k, bad, plan)
        assert solve_cache.candidates(k) == []
    solve_cache.store(k, 1e-12, plan)  # positive, but no σ calibrates to it: the check fails, the search runs
    per, g = solve_per_trial_eps(_space(), **ARGS)
    assert per > 1e-6 and g.eps <= 4.0 and _entries(home)[k]["per_trial_eps"] == per
