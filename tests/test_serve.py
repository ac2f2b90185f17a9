"""python -m diffprune.serve on a run set of tiny-random diffs: the key / rate / seed it picks,
numbers it writes only after every switch is checked bit for bit."""
import json
import textwrap

import pytest
import torch

from diffprune import serve
from diffprune.models import load_pretrained
from diffprune.projection import FixedMaskModel
from diffprune.storage import save_diff
from diffprune.tasks import get_task, task_label_set


def _config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent("""
        model: tiny-random
        tasks: [sst2, stsb]
        methods:
          structured: {method: diff_pruning, structured: true}
    """))
    return str(path)


def _diff(runs, task, key="structured", rate=1.0, seed=0):
    model, _, model_id = load_pretrained({"source": "tiny-random"}, get_task(task))
    torch.manual_seed(len(task) + int(rate * 10))
    dense = {n: torch.randn_like(p) * 0.05 for n, p in model.named_parameters() if not n.startswith("classifier")}
    fixed = FixedMaskModel.from_dense(model, dense, rate=rate)
    with torch.no_grad():
        model.classifier.weight.normal_()
    return save_diff(runs / task / key / f"rate{rate}" / f"seed{seed}" / "diff.safetensors", fixed,
                     model_id=model_id, rate=rate, task=task, labels=task_label_set(get_task(task)))


def test_find_diffs_takes_the_key_covering_most_tasks_then_the_largest_rate(tmp_path):
    runs = tmp_path / "runs"
    for task in ("sst2", "stsb"):
        _diff(runs, task, rate=0.5)
        _diff(runs, task, rate=1.0)
    _diff(runs, "sst2", key="other", rate=5.0)
    key, rate, seed, diffs = serve.find_diffs(runs, None, None, None)
    assert (key, rate, seed, sorted(diffs)) == ("structured", 1.0, 0, ["sst2", "stsb"])
    assert serve.find_diffs(runs, "other", None, None)[:2] == ("other", 5.0)
    with pytest.raises(FileNotFoundError, match="for rate 2.0: run the workflow's prune jobs first"):
        serve.find_diffs(runs, None, 2.0, None)


def test_serve_measures_two_tasks_with_different_heads_and_writes_json(tmp_path, capsys):
    runs = tmp_path / "runs"
    for task in ("sst2", "stsb"):
        _diff(runs, task)
    out = tmp_path / "serving.json"
    assert serve.main(["--config", _config(tmp_path), "--runs", str(runs), "--out", str(out), "--rounds", "3"]) == 0
    result = json.loads(out.read_text())
    assert result["tasks"] == ["sst2", "stsb"] and result["base_bit_identical_after_deactivate"]
    for task in ("sst2", "stsb"):
        entry = result["per_task"][task]
        assert entry["bit_exact"] and entry["diff"] == f"{task}/structured/rate1.0/seed0/diff.safetensors"
        assert entry["file_bytes"] == (runs / entry["diff"]).stat().st_size
        assert 0 < entry["switch_ms_median"] <= entry["switch_ms_p90"]
    measured, paper = result["measured"], result["extrapolated"]
    assert measured["n_tasks"] == 2 and paper["n_tasks"] == 9
    assert measured["full_models_resident_bytes"] == 2 * result["base_resident_bytes"]
    assert measured["bank_resident_bytes"] == result["base_resident_bytes"] + sum(
        e["resident_bytes"] for e in result["per_task"].values())
    assert "every switch bit-exact" in capsys.readouterr().out
