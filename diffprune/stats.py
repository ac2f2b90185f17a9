"""Statistics of a diff for the analysis: nonzeros per tensor / layer, fully-zero groups,
and per-layer distance between finetuned and pretrained weights."""
from __future__ import annotations

import math

import torch

from diffprune.layers import layer_of, layer_order


def diff_stats(dense: dict[str, torch.Tensor], head_pattern: str | None = None, head_numel: int = 0,
               labels: dict[str, str] | None = None) -> dict:
    """stats.json content for a (dense view of a) diff.

    ``labels``: parameter name -> layer label from the model (``layers.layer_labels``);
    names it lacks fall back to ``layer_of``.

    Groups are the paper's: one per parameter tensor (weight matrix / bias vector); a group
    is "entirely zero" when none of its diff entries is nonzero. The head, trained densely,
    is counted as fully modified and is not a group.
    """
    per_tensor, per_layer = {}, {}
    for name, delta in dense.items():
        layer = (labels or {}).get(name) or layer_of(name, head_pattern)
        nonzero = int(torch.count_nonzero(delta).item())
        per_tensor[name] = {"numel": delta.numel(), "nonzero": nonzero, "layer": layer}
        bucket = per_layer.setdefault(layer, {"numel": 0, "nonzero": 0})
        bucket["numel"] += delta.numel()
        bucket["nonzero"] += nonzero
    if head_numel:
        bucket = per_layer.setdefault("head", {"numel": 0, "nonzero": 0})
        bucket["numel"] += head_numel
        bucket["nonzero"] += head_numel
    return {
        "per_tensor": per_tensor,
        "per_layer": per_layer,
        "layer_order": layer_order(per_layer),
        "groups_total": len(per_tensor),
        "groups_zero": sum(1 for t in per_tensor.values() if t["nonzero"] == 0),
        "nonzeros": sum(t["nonzero"] for t in per_tensor.values()),
        "diffed_params": sum(t["numel"] for t in per_tensor.values()),
    }


def layer_distances(base: dict[str, torch.Tensor], dense: dict[str, torch.Tensor],
                    head_pattern: str | None = None, labels: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Per layer: relative L2 ||delta|| / ||theta_0|| and the angle (degrees) between
    theta_0 and theta_0 + delta, each layer's tensors taken as one vector."""
    sums: dict[str, list[float]] = {}
    for name, delta in dense.items():
        theta0 = base[name].detach().double().reshape(-1)
        d = delta.detach().double().reshape(-1)
        tuned = theta0 + d
        layer = (labels or {}).get(name) or layer_of(name, head_pattern)
        acc = sums.setdefault(layer, [0.0, 0.0, 0.0, 0.0])
        acc[0] += float(d @ d)
        acc[1] += float(theta0 @ theta0)
        acc[2] += float(theta0 @ tuned)
        acc[3] += float(tuned @ tuned)
    out = {}
    for layer, (dd, bb, bt, tt) in sums.items():
        cosine = bt / math.sqrt(bb * tt) if bb > 0 and tt > 0 else 1.0
        out[layer] = {
            "relative_l2": math.sqrt(dd / bb) if bb > 0 else float("nan"),
            "angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, cosine)))),
        }
    return {layer: out[layer] for layer in layer_order(out)}
