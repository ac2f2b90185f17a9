"""docs/ARCHITECTURE.md's config-key section is generated from the config schema, and the
schema declares exactly the options (and defaults) each registered method class has."""
from __future__ import annotations

import pytest

from diffprune import config_schema
from diffprune.registry import METHODS, method_class


def test_generated_section_is_what_the_schema_generates():
    section = config_schema.documented_section(config_schema.ARCHITECTURE_DOC.read_text(encoding="utf-8"))
    assert section is not None, "docs/ARCHITECTURE.md has lost its generated section markers"
    assert section == config_schema.render_docs(), (
        "docs/ARCHITECTURE.md is out of date: run `python -m diffprune.config_schema --write-docs`")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_schema_declares_every_option_of_every_method_with_its_default(name):
    declared = config_schema.method_options_schema(name)
    assert declared is not None, f"$defs.method_options.{name} is missing from config.schema.yaml"
    code = method_class(name).option_defaults()
    schema_defaults = {option: spec.get("default") for option, spec in declared["properties"].items()}
    assert schema_defaults == code, f"{name}: config.schema.yaml declares {schema_defaults}, the class has {code}"
