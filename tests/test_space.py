import optuna
import pytest

from dpsearch.config import ConfigError
from dpsearch.space import define_by_run, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", ["mnist", "mnist-lora", "smoke", "dpldm_paper"])
def test_shipped_spaces_load_by_name_and_path(name):
    assert load_space(name).name == name
    assert load_space(f"search_spaces/{name}.yaml").name == name


def test_define_by_run_always_gives_a_valid_range_and_every_param():
    space = load_space("mnist")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        fixed = define_by_run(space)(trial)
        a, b = map(int, fixed["layers"].split("-"))
        assert 1 <= a <= b <= 7
        seen.add((a, b))
        cfg = space.finetune_config({**trial.params, **fixed}, eps=5.0)
        assert cfg.clip == 0.01 and cfg.batch in (2000, 4000, 8000) and cfg.epochs in (3, 5, 8)
        assert 5e-4 <= cfg.lr <= 5e-3
        study.tell(trial, 0.5)
    assert len(seen) > 10  # single-module ranges and long ranges both occur


def test_named_ranges_are_a_categorical_choice():
    space = load_space("dpldm_paper")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    assert define_by_run(space)(trial)["layers"] in ("1-16", "5-16", "9-16", "13-16")
    with pytest.raises(ConfigError, match="outside this model's attention modules 1-7"):
        space.params.layers.check_model(7)


@pytest.mark.parametrize("body, field", [
    ("name: x\nparams: {layers: {low: 5, high: 2}, clip: {log_uniform: [1e-3, 1e-1]}, batch: {choice: [10]}, "
     "lr: {value: 1e-3}, epochs: {value: 1}}", "params.layers"),
    ("name: x\nparams: {layers: {low: 1, high: 2}, clip: {log_uniform: [0, 1e-1]}, batch: {choice: [10]}, "
     "lr: {value: 1e-3}, epochs: {value: 1}}", "params.clip"),
    ("name: x\nparams: {layers: {low: 1, high: 2}, clip: {value: 1}, batch: {choice: []}, lr: {value: 1e-3}, "
     "epochs: {value: 1}}", "params.batch"),
    ("name: x\nparams: {layers: {choice: ['3-x']}, clip: {value: 1}, batch: {value: 5}, lr: {value: 1e-3}, "
     "epochs: {value: 1}}", "params.layers"),
    ("name: x\nbogus: 1\nparams: {layers: {low: 1, high: 2}, clip: {value: 1}, batch: {value: 5}, "
     "lr: {value: 1e-3}, epochs: {value: 1}}", "bogus"),
    ("name: x\neps: -1\nparams: {layers: {low: 1, high: 2}, clip: {value: 1}, batch: {value: 5}, "
     "lr: {value: 1e-3}, epochs: {value: 1}}", "eps"),
    ("name: x\n", "params"),
    ("[1, 2", "not valid YAML"),
])
def test_malformed_space_names_the_field(tmp_path, body, field):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError, match="malformed|YAML") as e:
        load_space(p)
    assert field in str(e.value)


def test_missing_space_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")


def test_define_by_run_survives_pickling_for_searcher_checkpoints():
    import pickle

    fn = pickle.loads(pickle.dumps(define_by_run(load_space("smoke"))))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2)).ask()
    assert set(fn(trial)) >= {"layers"} and {"clip", "batch", "lr", "epochs"} <= set(trial.params)


def _params(tmp_path, **over):
    params = {"layers": "{low: 1, high: 2}", "clip": "{value: 1}", "batch": "{value: 5}", "lr": "{value: 1e-3}",
              "epochs": "{value: 1}", **over}
    p = tmp_path / "s.yaml"
    p.write_text("name: x\nparams: {" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}\n")
    return p


@pytest.mark.parametrize("over, message", [
    ({"batch": "{log_uniform: [100, 1000]}"}, "batch is a whole number: log_uniform would draw fractions"),
    ({"epochs": "{log_uniform: [1, 5]}"}, "epochs is a whole number: log_uniform would draw fractions"),
    ({"batch": "{choice: [abc]}"}, "batch: 'abc' is not a number"),
    ({"batch": "{choice: [10.5]}"}, "batch: 10.5 is not a whole number"),
    ({"epochs": "{low: 1, high: 1000}"}, "at most 64"),
    ({"clip": "{choice: [big]}"}, "clip: 'big' is not a number"),
    ({"lr": "{uniform: [1, 2]}"}, "lr must be one of"),
])
def test_malformed_parameter_types_are_clear_errors_at_load_time(tmp_path, over, message):
    with pytest.raises(ConfigError, match="malformed") as e:
        load_space(_params(tmp_path, **over))
    assert message in str(e.value)


def test_yaml_numbers_without_a_dot_arrive_as_numbers(tmp_path):
    space = load_space(_params(tmp_path, batch="{choice: [1e3, 500]}", clip="{choice: [1e-3]}",
                               epochs="{low: 1, high: 5, step: 2}"))
    assert space.params.batch.choice == [1000, 500] and all(type(b) is int for b in space.params.batch.choice)
    assert space.params.clip.choice == [1e-3] and space.params.epochs.values() == [1, 3, 5]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    define_by_run(space)(trial)
    assert trial.params["epochs"] in (1, 3, 5) and trial.params["batch"] in (1000, 500)


def test_validation_eps_of_the_space_is_used_and_bounded(tmp_path):
    from dpsearch.search.options import SweepOptions, validation_eps

    p = _params(tmp_path)
    p.write_text(p.read_text() + "validation: {eps: 2.5}\n")
    space = load_space(p)
    assert validation_eps(SweepOptions(), space, 5.0) == 2.5
    assert validation_eps(SweepOptions(val_eps=1.0), space, 5.0) == 1.0
    p.write_text(p.read_text().replace("eps: 2.5", "eps: 1000"))
    with pytest.raises(ConfigError, match="validation.eps"):
        load_space(p)



def test_method_and_rank_are_searched_and_rank_only_for_lora(tmp_path):
    space = load_space(_params(tmp_path, method="{choice: [attention, lora]}", rank="{choice: [4, 16]}"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        fixed = define_by_run(space)(trial)
        cfg = space.finetune_config({**trial.params, **fixed}, eps=5.0)
        if cfg.method == "lora":
            assert trial.params["rank"] in (4, 16) and cfg.rank == trial.params["rank"]
        else:
            assert "rank" not in trial.params
        seen.add((cfg.method, cfg.rank if cfg.method == "lora" else None))
        study.tell(trial, 0.5)
    assert seen == {("attention", None), ("lora", 4), ("lora", 16)}


def test_a_fixed_method_and_rank_reach_the_config_and_old_spaces_mean_attention(tmp_path):
    space = load_space(_params(tmp_path, method="lora", rank="{value: 2}"))
    trial = optuna.create_study().ask()
    fixed = define_by_run(space)(trial)
    assert fixed["method"] == "lora" and fixed["rank"] == 2
    cfg = space.finetune_config({**trial.params, **fixed}, eps=1.0)
    assert (cfg.method, cfg.rank) == ("lora", 2)
    (tmp_path / "old").mkdir()
    old = load_space(_params(tmp_path / "old"))  # a space written before the method dimension existed
    trial = optuna.create_study().ask()
    fixed = define_by_run(old)(trial)
    assert old.finetune_config({**trial.params, **fixed}, eps=1.0).method == "attention"


@pytest.mark.parametrize("method, message", [("{choice: [attention, dora]}", "params.method"),
                                             ("{choice: []}", "params.method"), ("{value: x, choice: [lora]}", "method")])
def test_a_bad_method_is_a_clear_error(tmp_path, method, message):
    with pytest.raises(ConfigError, match="malformed") as e:
        load_space(_params(tmp_path, method=method))
    assert message in str(e.value)


def test_noise_multiplicity_is_searched_and_ema_and_lr_schedule_reach_every_config(tmp_path):
    space = load_space(_params(tmp_path, multiplicity="{choice: [1, 4]}"))
    space = space.model_copy(update={"ema": 0.999, "lr_schedule": "cosine"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        fixed = define_by_run(space)(trial)
        cfg = space.finetune_config({**trial.params, **fixed}, eps=5.0)
        assert cfg.ema == 0.999 and cfg.lr_schedule == "cosine" and cfg.multiplicity == trial.params["multiplicity"]
        seen.add(cfg.multiplicity)
        study.tell(trial, 0.5)
    assert seen == {1, 4}
    assert space.reference_config(eps=5.0).multiplicity == space.reference.multiplicity == 1
    assert space.reference_config(eps=5.0).ema == 0.999 and space.reference_config(eps=5.0).lr_schedule == "cosine"
    with pytest.raises(ConfigError, match="params.multiplicity"):
        (tmp_path / "x").mkdir()
        load_space(_params(tmp_path / "x", multiplicity="{log_uniform: [1, 4]}"))


def test_the_validation_slice_holds_enough_records_to_rank_on_small_data():
    from dpsearch.space import VALIDATION_CAP, Slices

    s = Slices(tuning=0.1, validation=0.05, final=0.85)  # the shipped shares, floor 1,000 records
    assert s.fractions(60000) == {"tuning": 0.1, "validation": 0.05, "final": 0.85}  # 3,000 already
    f = s.fractions(5000)
    assert f["validation"] == pytest.approx(0.2) and f["final"] == pytest.approx(0.7) and f["tuning"] == 0.1
    assert sum(f.values()) == pytest.approx(1.0)
    assert s.fractions(1000)["validation"] == pytest.approx(VALIDATION_CAP)  # capped: the final run keeps the rest
    assert Slices(tuning=0.1, validation=0.05, final=0.85, min_validation=0).fractions(500)["validation"] == 0.05
    tight = Slices(tuning=0.45, validation=0.05, final=0.5).fractions(1000)  # never below the tuning share
    assert tight["final"] == pytest.approx(0.45) and tight["validation"] == pytest.approx(0.1)
    held = s.fractions(5000, batch=4000)  # nor too small for the largest batch: the final slice keeps 4,000
    assert held["final"] == pytest.approx(0.8) and held["validation"] == pytest.approx(0.1)
    assert s.fractions(5000, batch=4500) == {"tuning": 0.1, "validation": 0.05, "final": 0.85}  # no room: as given
