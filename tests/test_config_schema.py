"""diffprune/config_schema.py: the config schema, read by the runner and by Snakemake alike."""
from __future__ import annotations

from pathlib import Path

import pytest

from diffprune import config_schema

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "config").glob("*.yaml"))


def test_yaml_numbers_follow_yaml_1_2():
    parsed = config_schema.parse_yaml("a: 1e-7\nb: 1.0e-4\nc: 5E+2\nd: 3\ne: '1e-7'\nf: 1e\ng: 0.5", "x")
    assert parsed == {"a": 1e-7, "b": 1e-4, "c": 500.0, "d": 3, "e": "1e-7", "f": "1e", "g": 0.5}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_snakemake_validates_every_shipped_config_with_the_schema(path):
    from snakemake.utils import validate

    validate(config_schema.read_config_file(path), str(config_schema.SCHEMA_PATH), set_default=False)


@pytest.mark.parametrize("raw", [{"name": ".."}, {"rates": 0.5}, {"training": {"max_grad_norm": -1}},
                                 {"methods": ["full_finetuning"]}])
def test_snakemake_refuses_what_the_schema_refuses(raw):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    with pytest.raises(WorkflowError):
        validate(raw, str(config_schema.SCHEMA_PATH), set_default=False)
    with pytest.raises(config_schema.ConfigError):
        config_schema.check_config(raw)


def test_every_violation_is_listed_with_its_key():
    with pytest.raises(config_schema.ConfigError) as error:
        config_schema.check_config({"rates": [0.5, "abc"], "training": {"batch_size": 0, "typo": 1}})
    message = str(error.value)
    for part in ("rates.1 must be a number, got 'abc' (a string)", "training.batch_size must be >= 1",
                 "training: unknown training setting(s) ['typo']"):
        assert part in message


def test_a_config_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- sst2\n- rte\n")
    with pytest.raises(config_schema.ConfigError, match="a config must be a YAML mapping of keys .* got a list"):
        config_schema.read_config_file(path)
    path.write_text("tasks: [rte\n")
    with pytest.raises(config_schema.ConfigError, match="is not valid YAML"):
        config_schema.read_config_file(path)


def test_a_bad_key_is_named_as_a_key():
    with pytest.raises(config_schema.ConfigError, match=r"methods: the key 'my run' must be one path segment"):
        config_schema.check_config({"methods": {"my run": {"method": "full_finetuning"}}})


def test_a_methods_own_options_are_not_in_the_schema():
    """They are declared by the method (its Options dataclass) and checked in Python; the schema,
    which Snakemake validates with and which imports no method, lets them through."""
    from snakemake.utils import validate

    assert "method_options" not in config_schema.schema()["$defs"]
    raw = {"tasks": ["rte"], "methods": {"lora": {"rank": 4, "anything": [1]}}}
    validate(raw, str(config_schema.SCHEMA_PATH), set_default=False)
    config_schema.check_config(raw)
