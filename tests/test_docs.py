"""The architecture document lists every option of every registered method."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffprune.registry import METHODS, method_class

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


def _method_options_section() -> str:
    text = ARCHITECTURE.read_text()
    match = re.search(r"^## Method options.*?(?=^## )", text, flags=re.S | re.M)
    assert match, "docs/ARCHITECTURE.md has no '## Method options' section"
    return match.group(0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_option_is_documented(name):
    section = _method_options_section()
    entry = re.search(rf"^- (?:`[a-z_]+`, )*`{name}`.*?(?=^- |\Z)", section, flags=re.S | re.M)
    assert entry, f"method {name!r} has no bullet in the Method options section"
    missing = [option for option in method_class(name).option_defaults() if f"`{option}`" not in entry.group(0)]
    assert not missing, f"{name}: options {missing} are not documented in docs/ARCHITECTURE.md"
