"""FinetuneConfig's batch: an explicit B, or a sampling rate q resolved to B = ⌈N/round(1/q)⌉ on the plan's N."""

import json

import pytest

from dpsearch.cli import build_parser, main
from dpsearch.config import DEFAULT_Q, ConfigError, FinetuneConfig, batch_from_rate, validate
from dpsearch.privacy.accounting import poisson_plan
from dpsearch.privacy.dpsgd import plan_privacy


@pytest.mark.parametrize("n,batch", [(60000, 4000), (1000, 67), (200, 14), (100, 7), (10, 1), (3, 1), (1, 1)])
def test_the_default_batch_is_a_rate_that_gives_mnist_its_4000(n, batch):
    cfg = FinetuneConfig(eps=5.0)
    assert cfg.batch is None and cfg.q is None and DEFAULT_Q == pytest.approx(1 / 15)
    assert cfg.batch_for(n) == batch_from_rate(DEFAULT_Q, n) == batch
    resolved = cfg.for_data(n)
    assert resolved.batch == batch and resolved.q is None
    assert resolved.for_data(5 * n) is resolved  # resolved once: a later N never changes it


def test_on_mnist_the_default_plans_exactly_what_batch_4000_planned():
    default, explicit = plan_privacy(FinetuneConfig(eps=5.0), 60000), plan_privacy(FinetuneConfig(eps=5.0, batch=4000), 60000)
    assert default == explicit
    assert default.q == 1 / 15 and default.steps == 15 * 5


def test_an_explicit_batch_wins():
    cfg = FinetuneConfig(eps=5.0, batch=100)
    assert cfg.batch_for(60000) == cfg.for_data(60000).batch == 100
    assert plan_privacy(cfg, 60000).q == poisson_plan(60000, 100, 5)[0] == 1 / 600


def test_a_rate_q_gives_its_batch_and_the_accountant_the_sampler_rate():
    cfg = FinetuneConfig(eps=5.0, q=0.01)
    assert cfg.for_data(60000).batch == 600
    plan = plan_privacy(cfg, 60000)
    assert plan.q == 0.01 and plan.steps_per_epoch == 100
    # the accountant sees the rate the Poisson sampler runs, 1/⌈N/B⌉: 1/15 on 200 records as on 60,000
    small = plan_privacy(FinetuneConfig(eps=5.0), 200)
    assert small.q == poisson_plan(200, 14, 5)[0] == 1 / 15 and small.steps == 15 * 5


@pytest.mark.parametrize("q", [1 / 15, 0.01, 0.3, 0.07])
def test_a_rate_runs_1_over_round_1_over_q_whatever_the_exact_n(q):
    """The rate and steps per epoch depend on q alone (for N ≥ m(m−1)): one record more or less changes
    neither (B = round(q·N) ran 1/16 instead of 1/15 on about half of all N)."""
    m = round(1 / q)
    for n in range(max(m * (m - 1), 1), 120_000, 997):
        b = FinetuneConfig(eps=5.0, q=q).batch_for(n)
        assert poisson_plan(n, b, 1) == (1 / m, m), n
    assert round(1 / 0.3) == 3  # --q 0.3 runs 1/3, the nearest 1/m; the printout says so


def test_the_rate_is_applied_to_the_declared_public_n():
    cfg = FinetuneConfig(eps=5.0, n_public=200)
    assert cfg.batch_for(60000) == 14 and cfg.for_data(60000).batch == 14


def test_tiny_sets_get_a_batch_of_at_least_one():
    assert FinetuneConfig(eps=5.0).for_data(5).batch == 1  # round(5/15) = 0
    assert FinetuneConfig(eps=5.0, q=1e-6).for_data(100).batch == 1
    FinetuneConfig(eps=5.0).check_against_data(5)  # never "larger than the private set"
    plan = plan_privacy(FinetuneConfig(eps=5.0, epochs=1), 20)  # below m(m−1) = 210 records 1/15 cannot run exactly
    assert plan.q == 1 / 10 and plan.steps == 10  # B = ⌈20/15⌉ = 2


def test_a_batch_larger_than_the_set_is_still_refused():
    with pytest.raises(ConfigError, match="batch size 4000 is larger than the private set"):
        FinetuneConfig(eps=5.0, batch=4000).check_against_data(200)


@pytest.mark.parametrize("values,message", [
    ({"batch": 100, "q": 0.1}, "not both"),
    ({"q": 0.0}, "q must be in"),
    ({"q": 1.5}, "q must be in"),
    ({"q": float("nan")}, "q must be in"),
    ({"batch": 0}, "batch must be ≥ 1"),
])
def test_bad_batch_or_rate_is_a_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        validate(FinetuneConfig, eps=5.0, **values)


def test_batch_and_q_are_exclusive_on_the_command_line(capsys):
    p = build_parser()
    a = p.parse_args(["run", "--eps", "5"])
    assert a.batch is None and a.q is None
    assert p.parse_args(["run", "--eps", "5", "--q", "0.02"]).q == 0.02
    with pytest.raises(SystemExit):
        p.parse_args(["finetune", "--model", "m", "--out", "o", "--eps", "5", "--batch", "10", "--q", "0.1"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("extra,batch", [([], 14), (["--q", "0.05"], 10)])
def test_finetune_on_a_small_set_without_batch_runs_and_records_b_and_q(extra, batch, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    # --physical-batch left at its default 128, above every B here: one physical batch per step
    assert main(["finetune", "--model", str(tiny_model_dir), "--out", str(out), "--n-private", "200", "--eps", "5",
                 "--epochs", "1", "--layers", "2-3", "--quiet", *extra]) == 0
    privacy = json.loads((out / "privacy.json").read_text())
    steps = -(-200 // batch)
    assert privacy["batch"] == batch and privacy["n"] == 200
    assert privacy["q"] == 1 / steps and privacy["steps"] == steps and privacy["eps"] <= 5.0
    printed = capsys.readouterr().out
    assert f"B = {batch} of N = 200 (q = {1 / steps:.5f})" in printed
    assert f"batch B = {batch}: sampling rate q = {1 / steps:.4g} = 1/{steps} on N = 200" in printed


def test_the_recipe_flags_reach_the_finetune_config():
    from dpsearch.commands import _ft_config

    a = build_parser().parse_args(["run", "--eps", "5", "--multiplicity", "4", "--ema", "0.999",
                                   "--lr-schedule", "cosine"])
    cfg = _ft_config(a)
    assert (cfg.multiplicity, cfg.ema, cfg.lr_schedule) == (4, 0.999, "cosine")
    plain = _ft_config(build_parser().parse_args(["run", "--eps", "5"]))
    assert (plain.multiplicity, plain.ema, plain.lr_schedule) == (1, None, "constant")
    with pytest.raises(SystemExit):  # argparse's choices: a clear usage error
        build_parser().parse_args(["run", "--eps", "5", "--lr-schedule", "linear"])
    for bad in (["--multiplicity", "0"], ["--ema", "1.0"]):
        with pytest.raises(ConfigError):
            _ft_config(build_parser().parse_args(["run", "--eps", "5", *bad]))


def test_the_precision_flag_reaches_the_finetune_config():
    from dpsearch.commands import _ft_config

    assert _ft_config(build_parser().parse_args(["run", "--eps", "5"])).precision == "fp32"
    assert _ft_config(build_parser().parse_args(["run", "--eps", "5", "--precision", "bf16"])).precision == "bf16"
    with pytest.raises(ConfigError, match="clipping hooks"):  # Opacus' hooks would clip by bfloat16 norms
        _ft_config(build_parser().parse_args(["run", "--eps", "5", "--precision", "bf16", "--clipping", "hooks"]))
