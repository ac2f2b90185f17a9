"""A rate's one label, and the run directories built from it (diffprune/rungraph.py)."""
from __future__ import annotations

import pytest

from diffprune.rungraph import rate_folder, rate_label, relative_run_dir


@pytest.mark.parametrize("rate, label", [
    (0.5, "0.5"), (1.0, "1"), (1, "1"), ("1.0", "1"), (0.25, "0.25"), (100, "100"), (1e-05, "1e-05"),
    (0.1234567, "0.1234567"),  # every digit: two rates never share a label
])
def test_a_rate_reads_as_the_config_writes_it_without_a_trailing_zero(rate, label):
    assert rate_label(rate) == label


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 1, 1.0, "1.0", 2.5, 10, 100, 1e-05, 0.1234567, 100 / 3])
def test_run_directories_keep_the_names_finished_runs_already_have(rate):
    # Every run directory so far was named "rate" + str(float(rate)): rate1.0/, rate0.5/.
    assert rate_folder(rate) == f"rate{float(rate)}"
    assert relative_run_dir("rte", "structured", 0, rate).parts[2] == f"rate{float(rate)}"
    assert rate_folder(rate).removeprefix("rate").removesuffix(".0") == rate_label(rate)
