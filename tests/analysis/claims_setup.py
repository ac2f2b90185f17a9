"""Set-up shared by the claims tests: the paper-shaped run set of ``analysis_synthetic`` (every
claim holds on it), read back as the CLI reads it, edits that take runs or fields away, and
the claims table's verdicts on the result."""
from __future__ import annotations

import pandas as pd

from analysis_synthetic import paper_shaped_layers, paper_shaped_rows
from diffprune.analysis.claims import claims_table
from diffprune.analysis.runset import load_summary


def through_csv(tmp_path, summary: pd.DataFrame) -> pd.DataFrame:
    """As the CLI reads it: booleans and empty cells come back from CSV as strings / NaN."""
    path = tmp_path / "summary.csv"
    summary.to_csv(path, index=False)
    return load_summary(path)


def paper_shaped(offsets=None) -> pd.DataFrame:
    return pd.DataFrame(paper_shaped_rows(offsets))


def verdicts(tmp_path, summary: pd.DataFrame, layers: pd.DataFrame | None = None) -> pd.DataFrame:
    """The claims table's numeric rows, indexed by claim number (layers: the paper-shaped ones)."""
    summary = through_csv(tmp_path, summary)
    layers = paper_shaped_layers(summary) if layers is None else layers
    return claims_table(summary, layers).numeric.set_index("claim")


def edited_verdicts(tmp_path, offsets=None, edit=None) -> pd.DataFrame:
    """Verdicts on the paper-shaped run set with score ``offsets`` and then ``edit(summary,
    layers) -> (summary, layers)`` applied."""
    summary = through_csv(tmp_path, paper_shaped(offsets))
    layers = paper_shaped_layers(summary)
    if edit is not None:
        summary, layers = edit(summary, layers)
    return claims_table(summary.reset_index(drop=True), layers).numeric.set_index("claim")


def without(**conditions):
    """An edit dropping the runs (and their layer rows) matching every condition."""
    def drop(summary, layers):
        rows = pd.Series(True, index=summary.index)
        for column, value in conditions.items():
            rows &= summary[column].isin(value if isinstance(value, (list, tuple)) else [value])
        return summary[~rows], layers[layers["run_dir"].isin(summary.loc[~rows, "run_dir"])]
    return drop


def without_columns(prefix):
    """An edit dropping the summary columns whose names start with ``prefix``."""
    def drop(summary, layers):
        return summary.drop(columns=[c for c in summary.columns if c.startswith(prefix)]), layers
    return drop
