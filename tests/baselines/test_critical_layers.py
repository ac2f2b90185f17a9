import json

import pytest

from diffprune.baselines.critical_layers import CriticalLayers
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN
from diffprune.registry import build_method


def _write_stats(path, distances):
    path.write_text(json.dumps({"per_layer_distance": {
        label: {"relative_l2": l2, "angle_deg": angle} for label, (l2, angle) in distances.items()}}))
    return path


@pytest.fixture
def ranking(tmp_path):
    # layer_0 moved most by relative L2, embeddings most by angle; the head (new) and "other"
    # (the pooler, not an encoder layer) rank higher still but must be ignored
    return _write_stats(tmp_path / "stats.json", {
        "embeddings": (0.01, 9.0), "layer_0": (0.05, 2.0), "layer_1": (0.03, 3.0),
        "other": (0.9, 85.0), "head": (5.0, 80.0)})


def _names(model, *prefixes):
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def test_top_layer_by_relative_l2(tiny_bert, tiny_batch, ranking, check_trains_exactly, counts):
    method = CriticalLayers(num_layers=1, ranking=str(ranking))
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    assert method.chosen_layers == ["layer_0"]
    check_trains_exactly(method, module, tiny_batch, _names(module, "bert.encoder.layer.0.", "classifier."))
    assert method.new_parameter_count(module) == counts["block"] + counts["head"] == 2258


def test_two_layers_from_run_directory(tiny_bert, ranking):
    method = CriticalLayers(ranking=str(ranking.parent))  # default num_layers = 2
    method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    assert method.chosen_layers == ["layer_0", "layer_1"]


def test_rank_by_angle(tiny_bert, ranking):
    method = CriticalLayers(num_layers=1, ranking=str(ranking), ranking_metric="angle_deg")
    method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    assert method.chosen_layers == ["embeddings"]


def test_explicit_layers(tiny_bert, tiny_bert_identity, tiny_batch, check_trains_exactly, counts, stored_by,
                         tmp_path):
    method = build_method("critical_layers", layers=["layer_1", "embeddings"])
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    assert method.chosen_layers == ["embeddings", "layer_1"]
    declared = _names(module, "bert.embeddings.", "bert.encoder.layer.1.", "classifier.")
    check_trains_exactly(method, module, tiny_batch, declared)
    assert method.new_parameter_count(module) == counts["embeddings"] + counts["block"] + counts["head"]
    assert set(stored_by(tmp_path, method.save(module, tmp_path, tiny_bert_identity))) == declared


def test_explicit_layers_may_name_the_pooler(tiny_bert):
    method = CriticalLayers(layers=["other"])
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    assert method.new_parameter_count(module) == 272 + 34


def test_needs_a_ranking_or_layers(tiny_bert, tmp_path):
    assert CriticalLayers.needs_run == "full_finetuning" and CriticalLayers.reuses is None
    with pytest.raises(ValueError, match="ranking"):
        CriticalLayers()
    with pytest.raises(ValueError, match="not in the model"):
        CriticalLayers(layers=["layer_7"]).prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    with pytest.raises(FileNotFoundError):
        CriticalLayers(ranking=str(tmp_path / "missing.json")).prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    (tmp_path / "stats.json").write_text(json.dumps({"per_layer": {}}))
    with pytest.raises(ValueError, match="per_layer_distance"):
        CriticalLayers(ranking=str(tmp_path)).prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    short = _write_stats(tmp_path / "short.json", {"layer_1": (0.1, 1.0)})
    with pytest.raises(ValueError, match="num_layers=2"):
        CriticalLayers(ranking=str(short)).prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    with pytest.raises(ValueError, match="ranking_metric"):
        CriticalLayers(layers=["layer_0"], ranking_metric="l1")
