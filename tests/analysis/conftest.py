"""Fixtures of the analysis tests: the synthetic run set of ``analysis_synthetic``."""
from __future__ import annotations

import pandas as pd
import pytest

from analysis_synthetic import synthetic_layers, synthetic_rows
from diffprune.analysis.runset import load_summary


@pytest.fixture
def summary_frame() -> pd.DataFrame:
    return pd.DataFrame(synthetic_rows())


@pytest.fixture
def run_set(tmp_path, summary_frame):
    """(results dir, summary.csv path, layers.csv path) of the synthetic run set."""
    results = tmp_path / "synthetic"
    results.mkdir()
    summary_path = results / "summary.csv"
    layers_path = results / "layers.csv"
    summary_frame.to_csv(summary_path, index=False)
    synthetic_layers(summary_frame).to_csv(layers_path, index=False)
    return results, summary_path, layers_path


@pytest.fixture
def summary(run_set) -> pd.DataFrame:
    """The synthetic run set's summary, through the CSV as the CLI reads it."""
    _, summary_path, _ = run_set
    return load_summary(summary_path)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    """The synthetic run set taken through tables, figures and readme once (rendering every
    figure takes seconds); returns (results dir, {verb: exit status})."""
    from diffprune.analysis.__main__ import main

    results = tmp_path_factory.mktemp("rendered") / "synthetic"
    results.mkdir()
    summary = pd.DataFrame(synthetic_rows())
    summary.to_csv(results / "summary.csv", index=False)
    synthetic_layers(summary).to_csv(results / "layers.csv", index=False)
    common = ["--summary", str(results / "summary.csv"), "--layers", str(results / "layers.csv")]
    codes = {"tables": main(["tables", *common, "--out-dir", str(results / "tables")]),
             "figures": main(["figures", *common, "--out-dir", str(results / "figures")]),
             "readme": main(["readme", "--dir", str(results)])}
    return results, codes
