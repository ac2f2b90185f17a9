"""Per-layer nonzeros, zero groups and layer distances on hand-made diffs."""
import math

import torch

from diffprune.stats import diff_stats, layer_distances

HEAD = r"(^|\.)classifier(\.|$)"


def test_per_layer_counts_and_zero_groups():
    dense = {
        "bert.embeddings.word_embeddings.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
        "bert.encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2),
        "bert.encoder.layer.0.attention.self.query.bias": torch.tensor([1.0, 2.0]),
        "bert.encoder.layer.1.output.dense.bias": torch.zeros(3),
    }
    stats = diff_stats(dense, HEAD, head_numel=6)
    assert stats["per_layer"]["embeddings"] == {"numel": 4, "nonzero": 1}
    assert stats["per_layer"]["layer_0"] == {"numel": 6, "nonzero": 2}
    assert stats["per_layer"]["layer_1"] == {"numel": 3, "nonzero": 0}
    assert stats["per_layer"]["head"] == {"numel": 6, "nonzero": 6}
    assert stats["layer_order"] == ["embeddings", "layer_0", "layer_1", "head"]
    assert stats["groups_total"] == 4 and stats["groups_zero"] == 2
    assert stats["nonzeros"] == 3 and stats["diffed_params"] == 13


def test_layer_distance_by_hand():
    base = {"bert.encoder.layer.0.x": torch.tensor([1.0, 0.0])}
    dense = {"bert.encoder.layer.0.x": torch.tensor([0.0, 1.0])}
    out = layer_distances(base, dense, HEAD)["layer_0"]
    assert math.isclose(out["relative_l2"], 1.0)
    assert math.isclose(out["angle_deg"], 45.0, rel_tol=1e-9)
