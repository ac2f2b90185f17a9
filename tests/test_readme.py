"""The project README opens with the claims table of the committed reference run set."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_readme_claims_are_the_reference_run_sets():
    claims = ROOT / "results" / "reference" / "tables" / "claims.md"
    readme = (ROOT / "README.md").read_text()
    opening = readme.split("\n## ", 2)[1]  # the first section after the title
    assert opening.startswith("Does the paper hold?"), "README.md must open with the reference claims"
    assert "results/reference/README.md" in opening
    assert _table_lines(opening) == _table_lines(claims.read_text()), \
        "README.md's claims table differs from results/reference/tables/claims.md: paste the new one"
