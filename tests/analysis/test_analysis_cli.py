"""The whole chain as the workflow calls it: collect-like inputs -> tables -> figures -> readme."""
from __future__ import annotations

import json

from diffprune.analysis.__main__ import main


def test_tables_figures_readme(rendered):
    results, codes = rendered
    assert codes == {"tables": 0, "figures": 0, "readme": 0}

    tables = json.loads((results / "tables" / "index.json").read_text())
    assert [t["name"] for t in tables["written"]] == ["claims", "table1_main", "table2_structured_rates",
                                                      "table3_projection", "table4_squad", "table5_cost"]
    assert (results / "tables" / "claims.csv").is_file() and (results / "tables" / "claims.md").is_file()
    assert not (results / "tables" / "claims.tex").exists()
    for entry in tables["written"]:
        for name in entry["files"]:
            assert (results / "tables" / name).stat().st_size > 0

    readme = (results / "README.md").read_text()
    assert "# diffprune results: `synthetic`" in readme
    assert "squad: SQuAD v1.1 dev, article split" in readme
    assert "![Figure 2: modified parameters per layer, per task](figures/figure2_layer_share_by_task.png)" in readme
    assert "| full finetuning | 100% |" in readme  # table 1 embedded
    # The claims table is the README's first section, and appears once.
    sections = [line for line in readme.splitlines() if line.startswith("## ")]
    assert sections[0] == "## The paper's claims"
    assert readme.count("**The paper's claims, tested on this run set.**") == 1
    assert "[csv](tables/claims.csv)" in readme


def test_readme_lists_skipped_outputs(run_set):
    results, summary_path, layers_path = run_set
    assert main(["tables", "--summary", str(summary_path), "--out-dir", str(results / "tables")]) == 0
    # no layers.csv: the per-layer figures skip with a reason instead of drawing empty plots
    assert main(["figures", "--summary", str(summary_path), "--out-dir", str(results / "figures")]) == 0
    assert main(["readme", "--dir", str(results)]) == 0
    readme = (results / "README.md").read_text()
    assert "## Not shown" in readme and "figure2_layer_share_by_task` skipped" in readme
    assert not (results / "figures" / "figure2_layer_share_by_task.png").exists()


def test_empty_summary_fails(tmp_path, capsys):
    (tmp_path / "summary.csv").write_text("")
    assert main(["tables", "--summary", str(tmp_path / "summary.csv"), "--out-dir", str(tmp_path / "t")]) == 1
    assert "no runs" in capsys.readouterr().err
