"""Generated docs: docs/ARCHITECTURE.md's training settings from the config schema, and the
method reference (``python -m diffprune methods``) from each registered method's ``Options``."""
from __future__ import annotations

import dataclasses

import pytest

from diffprune import cli, config_schema
from diffprune.registry import METHODS, method_class


def test_generated_section_is_what_the_schema_generates():
    section = config_schema.documented_section(config_schema.ARCHITECTURE_DOC.read_text(encoding="utf-8"))
    assert section is not None, "docs/ARCHITECTURE.md has lost its generated section markers"
    assert section == config_schema.render_docs(), (
        "docs/ARCHITECTURE.md is out of date: run `python -m diffprune.config_schema --write-docs`")


def _as_yaml(value) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_generated_docs_hold_every_option_of_every_registered_method(name):
    """Read from the class the registry names, not from a list kept here: a method added to
    the registry is documented with every option its Options dataclass declares."""
    cls = method_class(name)
    lines = cli.list_methods().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"- `{name}`:")))
    entry = []
    for line in lines[start + 1:]:
        if not line.startswith("  - "):
            break
        entry.append(line)
    fields = dataclasses.fields(cls.Options)
    assert cls.summary and cls.summary in lines[start]
    assert [line.split("`")[1] for line in entry] == [f.name for f in fields]
    for line, field in zip(entry, fields):
        shown = _as_yaml(cls.option_defaults()[field.name])
        assert line.startswith(f"  - `{field.name}` ({shown}") and line.endswith(field.metadata["help"]), line
    assert ("No options." in lines[start]) == (not fields)


def test_the_methods_verb_prints_the_reference_and_no_file_keeps_a_copy(capsys):
    assert cli.main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == cli.list_methods()
    assert all(f"- `{name}`:" in printed for name in METHODS)
    # The committed docs hold the schema's keys only: a new method leaves every file but its
    # module, its registry line and its config entry untouched.
    architecture = config_schema.ARCHITECTURE_DOC.read_text(encoding="utf-8")
    assert not any(f"- `{name}`:" in architecture for name in METHODS)
