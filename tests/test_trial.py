"""`dpsearch release TRIAL`: what the release's card and headline state. A sweep trial's own ε is not it: the
trial was one of a search on the same private data, so its sweep's released figure is, read from the sweep's
storage; a plain `dpsearch run` trial states its own."""

import json
import os

import pytest

from dpsearch.cli import main
from dpsearch.config import ConfigError
from dpsearch.sweep_store import sweep_report
from dpsearch.trial import release_privacy, release_trial
from tests.privacy.test_report import _fake_sweep

OWN = {"dp": True, "eps": 0.46, "delta": 1e-3, "accountant": "prv", "sigma": 3.0, "q": 0.1, "steps": 20, "layers": "2-5"}


def _sweep_trial(storage, trial="t1", name="s") -> dict:
    """A sweep trial's privacy.json as dp_trial writes it: its own record and its sweep's name and storage."""
    return {**OWN, "sweep": {"name": name, "storage": str(storage), "trial": trial}}


def _select(sweep_dir, trial: str) -> None:
    """The sweep's summary.json names its selected trial, as run_sweep writes it."""
    summary = json.loads((sweep_dir / "dpsearch" / "summary.json").read_text())
    (sweep_dir / "dpsearch" / "summary.json").write_text(json.dumps({**summary, "best": {"trial": trial}}))


def test_a_sweep_trial_states_its_sweeps_released_eps_not_its_own(tmp_path):
    path, _ = _fake_sweep(tmp_path, trials=3)  # an adaptive sweep "s" stored under tmp_path
    released = sweep_report(path)["released"]
    p = release_privacy(_sweep_trial(tmp_path))
    assert (p["eps"], p["delta"], p["accountant"]) == (released["eps"], released["delta"], released["accountant"])
    assert p["eps"] > 4.9 > OWN["eps"] and p["run"]["eps"] == OWN["eps"]  # the trial's own ε is kept, not headlined
    assert p["sweep"]["figure"] == "released" and "sweep s: all 3 trials" in p["covers"] and "trial t1" in p["covers"]


def test_under_private_selection_only_the_selected_trial_gets_the_repeat_and_select_figure(tmp_path):
    path, _ = _fake_sweep(tmp_path, selection="geometric", mean=3.0, trials=1)  # t1 done, t2 errored
    summary = json.loads((path / "dpsearch" / "summary.json").read_text())
    summary["rows"][0]["trial"] = "abc12_00003"  # a Ray trial id: its index would bound K
    (path / "dpsearch" / "summary.json").write_text(json.dumps(summary))
    _select(path, "abc12_00003")
    rep = sweep_report(path)
    assert rep["released"]["eps"] != rep["tracking_store"]["eps"]
    chosen = release_privacy(_sweep_trial(tmp_path, "abc12_00003"))
    other = release_privacy(_sweep_trial(tmp_path, "t2"))
    assert chosen["eps"] == rep["released"]["eps"] and chosen["sweep"]["figure"] == "released"
    assert "abc12" not in json.dumps(chosen) and chosen["sweep"]["selected"]  # K stays hidden: no trial id on the card
    assert other["eps"] == rep["tracking_store"]["eps"] and other["sweep"]["figure"] == "tracking_store"
    assert "not the sweep's selected trial" in other["covers"] and other["sweep"]["trial"] == "t2"


def test_under_private_selection_before_the_sweep_selected_every_trial_gets_the_tracking_store_figure(tmp_path):
    path, _ = _fake_sweep(tmp_path, selection="geometric", mean=3.0, trials=1)  # no "best" in summary.json yet
    rep = sweep_report(path)
    p = release_privacy(_sweep_trial(tmp_path, "t1"))
    assert p["eps"] == rep["tracking_store"]["eps"] and "selected no trial yet" in p["covers"]


def test_under_the_slices_design_every_trial_gets_the_sweeps_released_figure(tmp_path):
    from dpsearch.space import SearchSpace, load_space

    raw = load_space("smoke").model_dump()
    raw["params"].update(batch={"value": 800}, epochs={"value": 2})
    sizes, delta = {"tuning": 6000, "validation": 6000, "final": 48000}, 1e-5
    saved = {"options": {"name": "sl", "eps": 0.5, "eps_total": 2.0, "trials": 4}, "design": "slices", "delta": delta,
             "space": json.loads(SearchSpace(**raw).model_dump_json()),
             "slices": {"planned": sizes, "trial_batch_scale": 6000 / 48000, "rule": {}, "keep": 1.0}}
    meta = tmp_path / "sl" / "dpsearch"
    meta.mkdir(parents=True)
    (meta / "sweep.json").write_text(json.dumps(saved))
    (meta / "validation_privacy.json").write_text(json.dumps({"eps": 1.99, "delta": delta, "accountant": "prv"}))
    rep = sweep_report(tmp_path / "sl")
    p = release_privacy(_sweep_trial(tmp_path, "t3", name="sl"))
    assert rep["design"] == "slices" and p["eps"] == rep["released"]["eps"] > OWN["eps"]
    assert p["sweep"]["figure"] == "released" and "disjoint slices" in p["covers"]


def test_an_unreadable_sweep_is_an_error_before_any_sampling_never_the_trials_own_eps(tmp_path):
    trial = tmp_path / "trial"  # no model/: the error must come before the model is even loaded
    trial.mkdir()
    (trial / "privacy.json").write_text(json.dumps(_sweep_trial(tmp_path / "gone")))
    with pytest.raises(ConfigError, match=r"trial t1 of sweep 's'.*cannot be read.*dpsearch services up.*AWS_ENDPOINT_URL"):
        release_trial(trial, tmp_path / "out", None)
    assert not (tmp_path / "out").exists()


def test_a_plain_run_trial_states_its_own_eps_as_before():
    p = release_privacy(dict(OWN))
    assert p["eps"] == OWN["eps"] and "this one DP fine-tune" in p["covers"] and "run" not in p
    assert release_privacy({"dp": False, "statement": "NOT DP"}) == {"dp": False, "statement": "NOT DP"}


def test_release_of_a_sweep_trial_headlines_the_sweeps_eps_on_the_card_and_the_printed_line(tiny_model_dir, tmp_path,
                                                                                             capsys):
    path, _ = _fake_sweep(tmp_path, trials=3)
    released = sweep_report(path)["released"]
    trial = tmp_path / "trial"  # a pulled sweep trial: model/ and its privacy.json
    trial.mkdir()
    os.symlink(tiny_model_dir, trial / "model")
    (trial / "privacy.json").write_text(json.dumps(_sweep_trial(tmp_path)))
    rel = tmp_path / "release"
    assert main(["release", str(trial), "--out", str(rel), "--n", "10", "--test", "none", "--steps", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"privacy: (ε = {released['eps']:.3f}, δ = 0.001), the figure of sweep s that covers this trial" in printed
    assert "own fine-tune was (ε = 0.460, δ = 0.001)-DP, but it was trial t1 of sweep s" in printed
    card = json.loads((rel / "card.json").read_text())
    assert card["privacy"]["eps"] == released["eps"] and card["privacy"]["run"]["eps"] == OWN["eps"]
    text = (rel / "DATA_CARD.md").read_text()
    assert f"**Privacy guarantee:** (ε = {released['eps']:.3f}, δ = 0.001)-DP" in text
    assert "**Part of a search:** this model's own fine-tune was (ε = 0.460" in text
