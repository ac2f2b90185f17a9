"""Figures on the synthetic run set: the plotted numbers equal the inputs, files are real."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from diffprune.analysis.__main__ import main
from diffprune.analysis.figures import (figure1_average_vs_rate, figure1_zero_groups, figure3_layer_share_by_seed,
                              figure_weight_distance, structured_layer_shares, zero_groups_data)
from diffprune.analysis.runset import AnalysisError, load_layers, load_summary
from diffprune.analysis.tables import Skipped
from analysis_synthetic import GROUPS_TOTAL, groups_zero, layer_nonzero


@pytest.fixture
def frames(run_set):
    _, summary_path, layers_path = run_set
    return load_summary(summary_path), load_layers(layers_path)


def test_zero_groups_equal_inputs(frames):
    summary, _ = frames
    data = zero_groups_data(summary).set_index(["rate", "task", "method_key"])
    for key in ("structured_diff_pruning", "diff_pruning"):
        for rate in (0.5, 1.0):
            seeds = [0, 1] if key == "structured_diff_pruning" else [0]
            expected = np.mean([groups_zero(key, rate, "rte", s) for s in seeds])
            row = data.loc[(rate, "rte", key)]
            assert row["groups_zero"] == pytest.approx(expected)
            assert row["groups_zero_n"] == len(seeds)
            assert row["groups_total"] == GROUPS_TOTAL
            assert row["variant"] == ("structured" if key == "structured_diff_pruning" else "unstructured")


def test_layer_shares_are_shares_of_the_runs_nonzeros(frames):
    summary, layers = frames
    shares, rate = structured_layer_shares(summary, layers)
    assert rate == 0.5  # the paper's rate when the run set has it
    assert shares.groupby("run_dir")["share_pct"].sum().to_numpy() == pytest.approx(100.0)
    counts = layer_nonzero("rte", 1)
    row = shares[(shares["task"] == "rte") & (shares["seed"] == 1) & (shares["layer"] == "layer_0")]
    assert row["share_pct"].item() == pytest.approx(100.0 * counts["layer_0"] / sum(counts.values()))


def test_average_vs_rate_uses_tasks_every_line_has(frames):
    summary, _ = frames
    figure = figure1_average_vs_rate(summary)
    data = figure.data.set_index("row")
    # GLUE columns only (SQuAD is not a GLUE column): (89+79+80+50+69)/5
    assert data.loc["structured diff pruning @ 0.5%", "avg"] == pytest.approx(73.4)
    assert data.loc["full finetuning", "avg"] == pytest.approx((91 + 81 + 82 + 52 + 71) / 5)
    # a dense baseline is one point at its natural budget (its new params / task)
    assert bool(data.loc["adapters 64", "natural_budget"]) and data.loc["adapters 64", "new_params_pct"] == 3.0
    assert data.loc["adapters 64", "avg"] == pytest.approx((88 + 78 + 79 + 40 + 60) / 5)


def test_all_figures_written_as_nonempty_png_pdf(rendered):
    results, codes = rendered
    assert codes["figures"] == 0
    out = results / "figures"
    index = json.loads((out / "index.json").read_text())
    names = [entry["name"] for entry in index["written"]]
    assert names == ["figure1_left_average_vs_rate", "figure1_right_zero_groups", "figure2_layer_share_by_task",
                     "figure3_layer_share_by_seed", "figure_weight_distance"]
    for name in names:
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes left no temp files


def test_single_seed_skips_figure3_with_a_note(frames):
    summary, layers = frames
    one_seed = summary[summary["seed"] == 0]
    with pytest.raises(Skipped, match="several seeds"):
        figure3_layer_share_by_seed(one_seed, layers)


def test_weight_distance_skipped_without_distances(frames):
    summary, layers = frames
    with pytest.raises(Skipped, match="relative_l2"):
        figure_weight_distance(summary, layers.drop(columns=["relative_l2", "angle_deg"]))
    figure = figure_weight_distance(summary, layers)
    row = figure.data.set_index(["task", "layer"]).loc[("rte", "layer_0")]
    assert row["relative_l2"] == pytest.approx(np.mean([0.02, 0.021]))
    assert row["angle_deg"] == pytest.approx(1.0)


def test_missing_groups_column_is_named(frames):
    summary, _ = frames
    with pytest.raises(AnalysisError, match="groups_zero"):
        figure1_zero_groups(summary.drop(columns=["groups_zero"]))


def test_cli_reports_missing_column_and_fails(run_set, capsys):
    results, summary_path, _ = run_set
    frame = pd.read_csv(summary_path).drop(columns=["groups_total"])
    frame.to_csv(summary_path, index=False)
    code = main(["figures", "--summary", str(summary_path), "--out-dir", str(results / "figures")])
    assert code == 1
    assert "groups_total" in capsys.readouterr().err
    # the figures that could be made were made; the index says what failed
    index = json.loads((results / "figures" / "index.json").read_text())
    assert [e["builder"] for e in index["errors"]] == ["figure1_zero_groups"]
