import json

import pytest

from diffprune.methods import Method
from diffprune.registry import METHODS, build_method, method_class

BASELINES = ["full_finetuning", "last_layer", "adapters", "nonadaptive_diff_pruning",
             "bitfit", "lora", "critical_layers", "sparsification"]


@pytest.mark.parametrize("name", BASELINES)
def test_registered(name):
    cls = method_class(name)
    assert issubclass(cls, Method) and cls.name == name and METHODS[name].startswith("diffprune.baselines.")
    json.dumps(cls.option_defaults())  # options must be expressible in the YAML config


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "critical_layers"])
def test_builds_with_defaults_and_rejects_unknown_options(name):
    assert build_method(name).options == method_class(name).option_defaults()
    with pytest.raises(ValueError, match="unknown option"):
        build_method(name, no_such_option=1)


def test_bitfit_by_name():
    method = build_method("bitfit", learning_rate=4e-4)
    assert method.options["learning_rate"] == 4e-4


def test_critical_layers_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown option"):
        build_method("critical_layers", layers=["layer_0"], no_such_option=1)
