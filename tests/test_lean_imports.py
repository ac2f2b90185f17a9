"""A job process loads transformers' model code without scikit-learn and scipy."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from diffprune.lean_imports import hide_unused_packages_from_transformers
hidden = hide_unused_packages_from_transformers()
from transformers import BertForSequenceClassification, BertConfig
from diffprune.tasks import metrics
model = BertForSequenceClassification(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=8, vocab_size=20))
print(json.dumps({"hidden": hidden, "again": hide_unused_packages_from_transformers(),
                  "loaded": sorted(name for name in ("sklearn", "scipy", "pandas") if name in sys.modules)}))
"""


def test_model_code_loads_without_scikit_learn_scipy_or_pandas():
    pytest.importorskip("sklearn")  # what is hidden must be installed for the test to mean anything
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["hidden"] == ["scikit-learn", "scipy"]
    assert report["loaded"] == []
    assert report["again"] == []  # once model code is imported, hiding is too late and says so


def test_the_command_line_entry_point_hides_them(monkeypatch):
    from diffprune import cli

    called = []
    monkeypatch.setattr(cli, "hide_unused_packages_from_transformers", lambda: called.append(1) or [])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert called == []  # --help exits while parsing, before anything is imported
    assert cli.main(["train", "--config", "no-such.yaml", "--task", "sst2", "--method-key", "x", "--seed", "0",
                     "--out", "o"]) == cli.USAGE_ERROR
    assert called == [1]
