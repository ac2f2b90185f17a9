"""diffprune/method_options.py: a method's options, declared once as a dataclass, give its
defaults, the check of a config entry's options and its docs."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import pytest

from diffprune import method_options
from diffprune.config_schema import ConfigError
from diffprune.method_options import option
from diffprune.methods import Method


@dataclass(frozen=True)
class Toy:
    size: int = option(4, "how big", ge=1)
    share: float = option(0.5, "a fraction", gt=0, lt=1)
    scale: float | None = option(None, "null = the run's", gt=0)
    flag: bool = option(False, "a switch")
    kind: Literal["a", "b"] = option("a", "which one")
    names: list[str] | None = option(None, "some names", min_items=1)
    tags: list[str] = option(["x"], "a list default")


class ToyMethod(Method):
    name = "toy"
    summary = "a method for these tests"
    Options = Toy


def test_the_dataclass_gives_type_range_default_and_help():
    schema = method_options.schema_of(Toy)
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["size"] == {"type": "integer", "minimum": 1, "default": 4, "description": "how big"}
    assert props["share"] == {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.5,
                              "description": "a fraction"}
    assert props["scale"]["type"] == ["number", "null"]
    assert props["flag"]["type"] == "boolean"
    assert props["kind"]["enum"] == ["a", "b"]
    assert props["names"] == {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1,
                              "default": None, "description": "some names"}


def test_defaults_come_from_the_dataclass():
    assert method_options.defaults(Toy) == {"size": 4, "share": 0.5, "scale": None, "flag": False, "kind": "a",
                                            "names": None, "tags": ["x"]}
    assert ToyMethod.option_defaults() == method_options.defaults(Toy)
    assert ToyMethod().options == method_options.defaults(Toy)
    assert ToyMethod(size=2).options["size"] == 2
    # a list default is a fresh copy each time, never one list shared by every method
    ToyMethod().options["tags"].append("y")
    assert ToyMethod.option_defaults()["tags"] == ["x"]
    assert Method.option_defaults() == {}  # no Options declared: no options


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as error:
        method_options.check_options("toy", Toy, {"sise": 3}, "methods.t")
    assert str(error.value) == ("methods.t: method 'toy' has no option(s) ['sise']; it accepts "
                                "['flag', 'kind', 'names', 'scale', 'share', 'size', 'tags']")
    with pytest.raises(ValueError, match=r"method 'toy' got unknown option\(s\) \['sise'\]; it accepts \['flag'"):
        ToyMethod(sise=3)
    with pytest.raises(ValueError, match="has no option.*it has no options"):
        method_options.check_options("m", Method.Options, {"x": 1}, "methods.m")


@pytest.mark.parametrize("options, message", [
    ({"size": 0}, "methods.t.size must be >= 1 (how big), got 0"),
    ({"share": 1}, "methods.t.share must be < 1 (a fraction), got 1"),
    ({"share": 0.0}, "methods.t.share must be > 0 (a fraction), got 0.0"),
    ({"scale": -1.0}, "methods.t.scale must be > 0 (null = the run's), got -1.0"),
    ({"kind": "c"}, "methods.t.kind must be one of a, b, got 'c'"),
    ({"names": []}, "methods.t.names must be a non-empty list, got []"),
])
def test_out_of_range_names_the_key_and_the_range(options, message):
    with pytest.raises(ConfigError) as error:
        method_options.check_options("toy", Toy, options, "methods.t")
    assert str(error.value) == message


@pytest.mark.parametrize("options, message", [
    ({"size": 2.5}, "methods.t.size must be an integer, got 2.5"),
    ({"size": "8x"}, "methods.t.size must be an integer, got '8x' (a string)"),
    ({"flag": "false"}, "methods.t.flag must be true or false, got 'false' (a string)"),
    ({"names": "layer_1"}, "methods.t.names must be a list or null, got the single value 'layer_1'"),
    ({"names": [1]}, "methods.t.names.0 must be a string, got 1"),
    ({"share": math.nan}, "methods.t.share must be a finite number, got nan"),
])
def test_wrong_type_names_the_key(options, message):
    with pytest.raises(ConfigError) as error:
        method_options.check_options("toy", Toy, options, "methods.t")
    assert message in str(error.value)


def test_yaml_values_are_checked_as_parsed():
    from diffprune.config_schema import parse_yaml

    values = parse_yaml("size: 3\nshare: 1e-1\nscale: null\nflag: true\nnames: [a, b]", "x")
    method_options.check_options("toy", Toy, values, "methods.t")  # 1e-1 is a number (YAML 1.2)
    assert ToyMethod(**values).options["share"] == 0.1


def test_a_method_built_in_python_is_checked_too():
    with pytest.raises(ValueError, match=r"toy.size must be >= 1 \(how big\), got 0"):
        ToyMethod(size=0)


def test_declaration_mistakes_are_caught():
    with pytest.raises(TypeError, match="unknown range keyword"):
        option(1, "h", minimum=0)

    @dataclass
    class NoDefault:
        size: int

    with pytest.raises(TypeError, match="'size' has no default"):
        method_options.defaults(NoDefault)

    @dataclass
    class Unsupported:
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="unsupported option type"):
        method_options.schema_of(Unsupported)


def test_docs_lines_list_summary_and_options():
    lines = method_options.docs_lines({"toy": ToyMethod, "plain": Method})
    assert lines[0] == "- `toy`: a method for these tests."
    assert "  - `size` (4; >= 1): how big" in lines
    assert "  - `share` (0.5; > 0, < 1): a fraction" in lines
    assert "  - `kind` (a; a / b): which one" in lines
    assert lines[-1] == "- `plain`: No options."
