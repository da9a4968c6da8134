"""Remembered σ: calibration's search is skipped for a plan seen before, never the accountant's check."""

from __future__ import annotations

import json
import os

import pytest

from dpsearch.privacy import accounting, sigma_memo
from dpsearch.privacy.accounting import calibrate_sigma, epsilon_for

PLAN = dict(eps=3.0, delta=1e-5, q=0.02, steps=150, accountant="rdp")  # RDP: the cheap accountant


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSEARCH_HOME", str(tmp_path))
    monkeypatch.setenv(sigma_memo.ENV, "1")  # as inside a sweep whose space declares n_public
    _forget_in_process()
    yield tmp_path
    _forget_in_process()


def _forget_in_process():
    calibrate_sigma.cache_clear()
    epsilon_for.cache_clear()


def _key():
    return sigma_memo.key(**PLAN, prefix=None)


def _calibrate():
    return calibrate_sigma(PLAN["eps"], PLAN["delta"], PLAN["q"], PLAN["steps"], PLAN["accountant"])


def test_a_calibrated_sigma_is_remembered_and_reused_without_the_search(home, monkeypatch):
    sigma = _calibrate()
    assert json.loads((home / sigma_memo.FILE).read_text())[_key()] == {"sigma": sigma}
    _forget_in_process()  # a new process: only the file remembers

    def no_search(*a, **k):
        raise AssertionError("searched again")

    monkeypatch.setattr(accounting, "_search_sigma", no_search)
    checks = []
    real = accounting.accountant_epsilon
    monkeypatch.setattr(accounting, "accountant_epsilon", lambda *a, **k: checks.append(1) or real(*a, **k))
    assert _calibrate() == sigma
    assert len(checks) == 1  # the remembered σ was checked by the accountant before it was used


def test_a_remembered_sigma_below_what_the_accountant_accepts_is_thrown_away(home):
    sigma = _calibrate()
    _forget_in_process()
    sigma_memo.remember(_key(), sigma / 2)  # tampered: twice the ε
    assert _calibrate() == pytest.approx(sigma)
    assert epsilon_for(_calibrate(), PLAN["q"], PLAN["steps"], PLAN["delta"], "rdp") <= PLAN["eps"]
    assert sigma_memo.remembered(_key()) == pytest.approx(sigma)  # replaced by the search's answer


def test_an_unreadable_memo_only_costs_the_search(home):
    (home / sigma_memo.FILE).write_text("{not json")
    sigma = _calibrate()
    assert epsilon_for(sigma, PLAN["q"], PLAN["steps"], PLAN["delta"], "rdp") <= PLAN["eps"]
    assert sigma_memo.remembered(_key()) == sigma


def test_the_key_follows_every_number_of_the_plan():
    base = _key()
    for change in ({"eps": 3.1}, {"delta": 2e-5}, {"q": 0.021}, {"steps": 151}, {"accountant": "prv"}):
        assert sigma_memo.key(**(PLAN | change), prefix=None) != base, change
    assert sigma_memo.key(**PLAN, prefix=2.0) != base
    assert _key() == base


def test_the_memo_keeps_only_the_newest_entries(home, monkeypatch):
    monkeypatch.setattr(sigma_memo, "KEEP", 3)
    for i in range(5):
        sigma_memo.remember(f"k{i}", 1.0 + i)
    assert list(json.loads((home / sigma_memo.FILE).read_text())) == ["k2", "k3", "k4"]
    assert sigma_memo.remembered("k0") is None and sigma_memo.remembered("k4") == 5.0


def test_where_n_is_not_public_nothing_is_remembered_or_read(home, monkeypatch):
    """q and the steps follow from N: outside a sweep that declares it, calibration neither writes nor reads."""
    with sigma_memo.allowed(False):
        sigma = _calibrate()
        assert not (home / sigma_memo.FILE).exists()
        _forget_in_process()
        sigma_memo.remember(_key(), 2 * sigma)  # would be accepted (more noise) if it were read
        assert _calibrate() == sigma
    _forget_in_process()
    assert _calibrate() == 2 * sigma  # the memo on again: the larger remembered σ passes the check (costs utility only)


def test_the_main_jobs_sigmas_ship_for_every_cell_and_are_the_searchs(home, monkeypatch):
    """`dpsearch sweep --eps 5` on the shipped space: the σ of every grid cell at the shipped per-trial ε (the trials)
    and at 5 (the final run) ships with the package, and one of them is what the search finds (to its 0.2%)."""
    from dpsearch.privacy import solve_cache
    from dpsearch.privacy.accounting import _search_sigma
    from dpsearch.privacy.report import solve_plan
    from dpsearch.search.design import slice_solve_args
    from dpsearch.space import load_space

    space = load_space("mnist")
    plan = solve_plan(space, **slice_solve_args(space, 5.0, 8))
    per = json.loads(solve_cache.SHIPPED.read_text())[solve_cache.key(**plan)]["per_trial_eps"]
    shipped = json.loads(sigma_memo.SHIPPED.read_text())
    for eps in (per, 5.0):
        for q, steps in plan["cells"]:
            assert sigma_memo.key(eps, plan["delta"], q, steps, "prv", None) in shipped, (eps, q, steps)
    q, steps = plan["cells"][4]
    found = shipped[sigma_memo.key(per, plan["delta"], q, steps, "prv", None)]["sigma"]
    assert found == pytest.approx(_search_sigma(per, plan["delta"], q, steps, "prv", None), rel=0.002)
    monkeypatch.setattr(accounting, "_search_sigma", lambda *a: pytest.fail("searched although shipped"))
    assert calibrate_sigma(per, plan["delta"], q, steps, "prv") == found  # checked, then used
    assert not (home / sigma_memo.FILE).exists()  # a shipped answer is not copied to the user's memo


def test_a_shipped_sigma_the_accountant_rejects_falls_through_to_the_users(home, monkeypatch, tmp_path):
    sigma = _calibrate()
    _forget_in_process()
    shipped = tmp_path / "shipped.json"
    monkeypatch.setattr(sigma_memo, "SHIPPED", shipped)
    sigma_memo.remember(_key(), sigma / 2, path=shipped)  # shipped, but over ε under this accountant
    monkeypatch.setattr(accounting, "_search_sigma", lambda *a: pytest.fail("searched although the user's σ passes"))
    assert sigma_memo.candidates(_key()) == [sigma / 2, sigma]
    assert _calibrate() == sigma


def test_off_is_said_not_left_unset_so_cluster_nodes_hear_it(monkeypatch):
    monkeypatch.setenv(sigma_memo.ENV, "1")  # e.g. exported on a node
    with sigma_memo.allowed(False):
        assert not sigma_memo.in_use() and os.environ[sigma_memo.ENV] == "0"
        from dpsearch.search.resources import node_env

        assert node_env("127.0.0.1:6379")["env_vars"][sigma_memo.ENV] == "0"
    assert os.environ[sigma_memo.ENV] == "1"
