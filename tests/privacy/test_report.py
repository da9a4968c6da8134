"""The sweep privacy report and the `dpsearch privacy` calculators."""

import json
import math

import numpy as np
import pytest

from dpsearch.cli import main
from dpsearch.privacy.report import format_report, space_grid
from dpsearch.sweep_store import sweep_report
from dpsearch.space import load_space
from dpsearch.search.options import draw_trials


def _fake_sweep(tmp_path, selection=None, mean=None, trials=3):
    """A sweep's stored metadata as run_sweep writes it (the values come from real calibrations)."""
    space = load_space("smoke")
    grid = space_grid(space, 5.0, 400, delta=1e-3)
    meta = tmp_path / "s" / "dpsearch"
    meta.mkdir(parents=True)
    opts = {"name": "s", "eps": 5.0, "trials": trials, "private_selection": selection, "mean_trials": mean}
    (meta / "sweep.json").write_text(json.dumps({"options": opts, "n_private": 400, "delta": 1e-3,
                                                 "space": json.loads(space.model_dump_json())}))
    m = grid[0]
    row = {"trial": "t1", "status": "DONE", "eps": 4.99, "delta": 1e-3, "sigma": m.sigma, "q": m.q, "steps": m.steps,
           "clip": 0.01, "batch": 50, "epochs": 1, "layers": "2-5", "accountant": "prv"}
    (meta / "summary.json").write_text(json.dumps({"rows": [row, {"trial": "t2", "status": "ERROR"}]}))
    (meta / "validation_privacy.json").write_text(json.dumps(
        {"eps": 4.99, "delta": 1e-3, "sigma": m.sigma, "q": m.q, "steps": m.steps, "layers": "1-7", "accountant": "prv", "n": 400}))
    return tmp_path / "s", grid


def test_grid_covers_every_batch_and_epochs_choice_each_at_the_target_eps():
    grid = space_grid(load_space("smoke"), 5.0, 400)
    assert {(round(1 / m.q), m.steps) for m in grid} == {(8, 8), (8, 16), (4, 4), (4, 8)}  # N/B per epoch, steps


def test_report_of_an_adaptive_sweep_composes_all_trials_and_the_validation_generator(tmp_path):
    path, grid = _fake_sweep(tmp_path, trials=3)
    rep = sweep_report(path)
    g = rep["released"]
    assert g["mode"] == "adaptive" and g["trials"] == 3 and g["delta"] == 1e-3
    assert g["eps"] > g["trial_eps_worst"] > 4.9  # RDP of one trial is looser than its PRV ε = 5
    assert g["eps"] < 4 * g["trial_eps_worst"]  # composition, not ε·K
    text = format_report(rep)
    assert "released model: (ε = " in text and "validation generator: (ε = 4.990, δ = 0.001)" in text
    assert "t2: ERROR, no privacy record (it did not finish" in text


def test_report_of_private_selection_uses_repeat_and_select(tmp_path):
    path, _ = _fake_sweep(tmp_path, selection="geometric", mean=3.0, trials=5)
    rep = sweep_report(path)
    assert rep["released"]["mode"] == "geometric" and rep["released"]["mean_trials"] == 3.0
    assert "whoever reads all of it sees the composition of all trials" in rep["statement"]
    # 1 of the 5 drawn trials finished (t2 errored, 3 never ran): said in the tracking store's part, never beside
    # the release's figure, and no retry is offered (it would run a repetition twice)
    store = rep["tracking_store"]
    assert "only 1 of the K = 5 drawn trials finished" in format_report(rep, tracking_store=True)
    assert "Retrying it is refused" in store["incomplete"] and "incomplete" not in rep
    assert "incomplete" not in sweep_report(_fake_sweep(tmp_path / "adaptive", trials=2)[0])  # adaptive: no such rule


def test_nothing_beside_the_repeat_and_select_figure_carries_k_ids_statuses_or_rows(tmp_path):
    """Papernot–Steinke bound the output with K hidden: the release's part of the report (text and JSON, as
    `dpsearch privacy report` prints it) names no K, no trial id, no status and no per-trial row."""
    path, _ = _fake_sweep(tmp_path, selection="geometric", mean=3.0, trials=5)
    rep = sweep_report(path)
    release = {k: v for k, v in rep.items() if k != "tracking_store"}
    for text in (format_report(rep), json.dumps(release)):
        for leak in ("t1", "t2", "DONE", "ERROR", "K = ", '"trials_started"', '"trials": 5', "trials_rows"):
            assert leak not in text, leak
    assert rep["released"]["trials"] is None
    assert "--tracking-store" in format_report(rep)  # where the operator finds the rest
    # the store's own figure composes every trial attempt it holds (5 drawn), never fewer
    from dpsearch.privacy.report import guarantee_for
    from dpsearch.privacy.search_cost import Mechanism

    vp = json.loads((path / "dpsearch" / "validation_privacy.json").read_text())
    five = guarantee_for(load_space("smoke"), 5.0, 400, Mechanism(vp["sigma"], vp["q"], vp["steps"]), trials=5,
                         delta=1e-3)
    assert rep["tracking_store"]["trials"] == 5 and rep["tracking_store"]["eps"] == pytest.approx(five.eps)


def test_the_cli_prints_the_release_part_and_the_store_part_apart(tmp_path, capsys):
    path, _ = _fake_sweep(tmp_path, selection="geometric", mean=3.0, trials=5)
    assert main(["privacy", "report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "repeat-and-select" not in out or "K = " not in out
    assert "t1" not in out and "ERROR" not in out and "(Papernot & Steinke 2022)" in out
    assert main(["privacy", "report", str(path), "--tracking-store"]) == 0
    out = capsys.readouterr().out
    assert "TRACKING STORE" in out and "t1:" in out and "all 5 trial runs" in out
    assert main(["privacy", "report", str(path), "--json"]) == 0
    assert "tracking_store" not in json.loads(capsys.readouterr().out)


def test_a_trial_recorded_with_less_noise_than_planned_is_refused(tmp_path):
    """The report recalibrates σ from the plan; it must check that every trial really ran at least that σ."""
    path, _ = _fake_sweep(tmp_path, trials=2)
    summary = path / "dpsearch" / "summary.json"
    rows = json.loads(summary.read_text())["rows"]
    rows[0]["sigma"] *= 0.9
    summary.write_text(json.dumps({"rows": rows}))
    from dpsearch.config import ConfigError

    with pytest.raises(ConfigError, match="below the planned σ"):
        sweep_report(path)
    rows[0]["sigma"], rows[0]["q"] = rows[0]["sigma"] / 0.9, 0.3  # a mechanism outside the space's grid
    summary.write_text(json.dumps({"rows": rows}))
    with pytest.raises(ConfigError, match="no cell of the search space's privacy grid"):
        sweep_report(path)


def test_a_validation_set_made_twice_is_composed_twice(tmp_path):
    path, _ = _fake_sweep(tmp_path, trials=2)
    once = sweep_report(path)["released"]["eps"]
    (path / "dpsearch" / "attempts.json").write_text(json.dumps({"validation": 2}))
    rep = sweep_report(path)
    assert rep["validation_runs"] == 2 and rep["released"]["eps"] > once
    assert "2 runs composed" in format_report(rep)


def test_a_poisson_k_redrawn_from_zero_is_accounted_at_a_smaller_inner_delta():
    """K ~ Poisson(μ) conditioned on K ≥ 1 costs δ/P(K ≥ 1): the bound is computed at δ·(1 − e^{−μ})."""
    import math

    from dpsearch.privacy.search_cost import Mechanism, repeat_and_select, rdp_to_dp, search_guarantee

    m = Mechanism(1.0, 0.05, 100)
    g = search_guarantee([m], 1e-5, None, selection="poisson", mean_trials=2.0)
    curve = repeat_and_select(m.rdp(), 2.0, "poisson")
    assert g.delta == 1e-5
    assert g.eps == pytest.approx(rdp_to_dp(curve, 1e-5 * (1 - math.exp(-2.0)))[0])
    assert g.eps > rdp_to_dp(curve, 1e-5)[0]


@pytest.mark.parametrize("selection", ["geometric", "logarithmic", "poisson"])
def test_number_of_trials_is_drawn_with_the_requested_mean(selection):
    ks = np.array([draw_trials(selection, 4.0) for _ in range(4000)])
    assert ks.mean() == pytest.approx(4.0 / (1 - np.exp(-4.0)) if selection == "poisson" else 4.0, rel=0.08)
    assert (ks >= 1).all() and len(set(ks.tolist())) > 3  # a Poisson 0 is redrawn (accounted: search_cost.py)


def test_privacy_calculators(capsys):
    assert main(["privacy", "sigma", "--eps", "5", "--batch", "512", "--n", "60000", "--epochs", "10"]) == 0
    out = capsys.readouterr().out
    assert "σ = 0.69" in out and "δ = 1.5e-06" in out and "PRV" in out and "steps = 1180" in out
    sigma = float(out.split("σ = ")[1].split(":")[0])
    assert main(["privacy", "eps", "--sigma", str(sigma), "--batch", "512", "--n", "60000", "--epochs", "10",
                 "--accountant", "rdp"]) == 0
    eps_rdp = float(capsys.readouterr().out.split("ε = ")[1].split(",")[0])
    assert 5.0 < eps_rdp < 6.5  # RDP is looser than PRV for the same σ


def test_privacy_calculators_plan_a_warm_up_and_compose_it(capsys):
    from dpsearch.config import default_delta
    from dpsearch.privacy.accounting import warmup_sigma

    base = ["--batch", "4000", "--n", "55000", "--epochs", "5"]
    assert main(["privacy", "sigma", "--eps", "1", *base]) == 0
    plain = float(capsys.readouterr().out.split("σ = ")[1].split(":")[0])
    assert main(["privacy", "sigma", "--eps", "1", "--warmup", "0.05", *base]) == 0
    out = capsys.readouterr().out
    sigma_w = warmup_sigma(1.0, default_delta(55000), 0.05)
    assert f"σ_w = {sigma_w:.4f}" in out
    sigma = float(out.split("σ = ")[1].split(":")[0])
    assert sigma > plain  # the steps get what the release leaves
    assert main(["privacy", "eps", "--sigma", str(sigma), "--warmup-sigma", str(sigma_w), *base]) == 0
    eps = float(capsys.readouterr().out.split("ε = ")[1].split(",")[0])
    assert 0.99 < eps <= 1.0 + 1e-3
    assert main(["privacy", "eps", "--sigma", str(sigma), *base]) == 0  # without the release: less than ε
    assert float(capsys.readouterr().out.split("ε = ")[1].split(",")[0]) < eps
    assert main(["privacy", "sigma", "--eps", "1", "--warmup", "0.7", *base]) == 2
    assert "share of the budget in (0, 0.5]" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--delta", "1e-4"], "must be in (0, 1/N"),
    (["--batch", "70000"], "larger than N"),
])
def test_privacy_calculator_rejects_bad_input(args, message, capsys):
    base = ["privacy", "sigma", "--eps", "5", "--batch", "512", "--n", "60000", "--epochs", "10"]
    assert main(base + args) == 2  # argparse keeps the last of a repeated option
    assert message in capsys.readouterr().err


def test_eps_total_is_met_and_nearly_used_up():
    from dpsearch.privacy.report import solve_per_trial_eps

    # RDP: the bisection does not depend on the accountant, and PRV calibration (tests/privacy/test_accounting.py)
    # costs seconds per σ, some thirty times here
    space = load_space("smoke").model_copy(update={"accountant": "rdp"})
    per, g = solve_per_trial_eps(space, 400, 8.0, selection="geometric", mean_trials=3, rel_tol=0.1, cache=False)
    assert g.eps <= 8.0 and g.eps > 8.0 * 0.8  # a bisection to 10% on the per-trial ε
    assert 0 < per < 8.0 and g.validation_eps is not None


def test_eps_total_that_cannot_be_met_is_refused():
    from dpsearch.config import ConfigError
    from dpsearch.privacy.report import solve_per_trial_eps

    with pytest.raises(ConfigError, match="cannot be met"):
        solve_per_trial_eps(load_space("smoke"), 400, 0.01, trials=50)


def test_every_trial_ever_started_counts_even_when_the_summary_lost_them(tmp_path):
    path, _ = _fake_sweep(tmp_path, trials=2)
    two = sweep_report(path)["released"]
    (path / "dpsearch" / "trials_started.json").write_text(json.dumps([f"t{i}" for i in range(5)]))
    rep = sweep_report(path)
    assert rep["released"]["trials"] == 5 and rep["trials_started"] == 5 and rep["released"]["eps"] > two["eps"]


def test_private_selection_states_the_selected_model_and_the_whole_tracking_store(tmp_path):
    path, _ = _fake_sweep(tmp_path, selection="geometric", mean=3.0, trials=4)
    rep = sweep_report(path)
    store = rep["tracking_store"]
    assert store["mode"] == "adaptive" and store["trials"] == 4
    assert store["eps"] > rep["released"]["eps"] or store["eps"] > 0  # both figures are given
    text = format_report(rep, tracking_store=True)
    assert "whole tracking store" in text and "reveals K" in text and "final/ release" in text
