"""Which layer a parameter belongs to: embeddings, layer_0..layer_{L-1}, head, other.

Used by the statistics (Figure 2/3's per-layer share of modified parameters), by the
last-layer baseline and by the layer-selection baselines, so that "a layer" means the same
thing everywhere.
"""
from __future__ import annotations

import re

# Transformer blocks in the usual Hugging Face naming: encoder.layer.3, h.3, layers.3, blocks.3
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")
_EMBED = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|wte|wpe|embed_positions|word_embeddings)(?:\.|$)")


def layer_of(name: str, head_pattern: str | None = None) -> str:
    """Layer label of a parameter name."""
    if head_pattern and re.search(head_pattern, name):
        return "head"
    match = _BLOCK.search(name)
    if match:
        return f"layer_{int(match.group(1))}"
    if _EMBED.search(name):
        return "embeddings"
    return "other"


def layer_order(labels) -> list[str]:
    """Embeddings first, blocks in depth order, then anything else, head last."""
    labels = set(labels)
    blocks = sorted((l for l in labels if l.startswith("layer_")), key=lambda l: int(l.split("_")[1]))
    ordered = (["embeddings"] if "embeddings" in labels else []) + blocks
    ordered += sorted(labels - set(ordered) - {"head"})
    return ordered + (["head"] if "head" in labels else [])


def num_blocks(names) -> int:
    """Number of transformer blocks seen in a list of parameter names."""
    blocks = {layer_of(n) for n in names if layer_of(n).startswith("layer_")}
    return len(blocks)
