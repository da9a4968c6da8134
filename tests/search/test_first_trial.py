"""The sweep's first trial: the reference configuration in the space's Optuna parameters."""

from dpsearch.search.first_trial import reference_point
from dpsearch.space import SearchSpace, load_space


def test_the_reference_configuration_becomes_optuna_parameters_when_the_space_holds_it():
    mnist = load_space("mnist")
    assert reference_point(mnist, 7) == {"layer_end_1": 1, "layer_end_2": 7, "batch": 4000, "lr": 2e-3, "epochs": 5}
    smoke = load_space("smoke")  # clip searched there: it is a parameter of the point
    assert reference_point(smoke, 7)["clip"] == smoke.reference.clip
    raw = mnist.model_dump()
    raw["reference"]["batch"] = 1000  # not among the batch choices
    assert reference_point(SearchSpace(**raw), 7) is None
    raw = mnist.model_dump()
    raw["params"]["layers"] = {"choice": ["1-3", "1-7"]}
    assert reference_point(SearchSpace(**raw), 7)["layers"] == "1-7"
    assert reference_point(SearchSpace(**raw), 9) is None  # "all" is 1-9 on a 9-module model
