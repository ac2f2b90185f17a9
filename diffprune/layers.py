"""Which layer a parameter belongs to: embeddings, layer_0..layer_{L-1}, head, other.

Used by the statistics (Figure 2/3's per-layer share of modified parameters), by the
last-layer baseline and by the layer-selection baselines, so that "a layer" means the same
thing everywhere.

With the model at hand, ``layer_labels`` numbers the model's own blocks (``block_prefixes``:
the repeated blocks it keeps in a ``ModuleList`` / ``Sequential``, e.g. BERT's
``encoder.layer``, Llama's ``model.layers``, torchvision ViT's ``encoder.layers``, ResNet's
``layer1 .. layer4``, MobileNet's ``features``) in depth order. ``layer_of`` reads a bare
parameter name with the usual Hugging Face block naming; it is the fallback for a model with
no block list and for callers that only have names.

``is_head`` is the one test of "is this parameter part of the task head" (the methods, the
statistics, the stored diff and its fingerprint all ask it), and ``layer_rank`` the one order
of layer labels (the statistics, the baselines and the analysis's figures). The analysis runs
without torch, so torch is imported only inside the functions that inspect a model.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# Transformer blocks in the usual Hugging Face naming: encoder.layer.3, h.3, layers.3, blocks.3
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")
_EMBED = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|wte|wpe|embed_positions|word_embeddings)(?:\.|$)")
# Normalisation layers by class name, for the many libraries that define their own
# (LlamaRMSNorm, T5LayerNorm, ...) instead of using torch's.
_NORM_CLASS = re.compile(r"(?:LayerNorm|RMSNorm|LayerNormalization)$")


def is_head(name: str, head_pattern: str | None) -> bool:
    """A parameter of the task head (new per task, trained densely, never diffed): its name
    matches ``head_pattern`` anywhere (``re.search``). None: no head is known, so nothing is."""
    return head_pattern is not None and re.search(head_pattern, name) is not None


def layer_of(name: str, head_pattern: str | None = None) -> str:
    """Layer label of a parameter name, from the name alone (see ``layer_labels``)."""
    if is_head(name, head_pattern):
        return "head"
    match = _BLOCK.search(name)
    if match:
        return f"layer_{int(match.group(1))}"
    if _EMBED.search(name):
        return "embeddings"
    return "other"


def is_layer_norm(module: nn.Module) -> bool:
    """A layer / RMS normalisation module (torch's or a library's own class)."""
    from torch import nn

    torch_norms = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
    return isinstance(module, torch_norms) or bool(_NORM_CLASS.search(type(module).__name__))


def _holds_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _is_block_list(container: nn.Module) -> bool:
    """A ModuleList / Sequential of repeated composite blocks.

    Most parameter-holding children share one class (MobileNet's ``features`` starts and ends
    with a different conv than its inverted-residual blocks, which still count), that class is
    composite (not a bare Linear / Conv: a Sequential of those is an MLP, not a stack of
    blocks), and there are at least two of them, or a ModuleList of one (a 1-block model).
    """
    from torch import nn

    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        return False
    children = [child for child in container.children() if _holds_parameters(child)]
    if not children:
        return False
    block_class, count = Counter(type(child) for child in children).most_common(1)[0]
    composite = any(True for child in children if type(child) is block_class and next(child.children(), None))
    if not composite:
        return False
    if len(children) == 1:
        return isinstance(container, nn.ModuleList)
    return count >= 2 and 2 * count >= len(children)


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def block_prefixes(model: nn.Module, head_pattern: str | None = None) -> list[str]:
    """Module names of the model's blocks in depth order (empty: no block list found).

    Outermost block lists win (a block's own inner lists are parts of that block); several
    lists (an encoder's and a decoder's, ResNet's four stages) are numbered on in model order.
    Nothing inside the task head counts.
    """
    claimed: list[str] = []
    blocks: list[str] = []
    for name, module in model.named_modules():
        if any(_under(name, prefix) for prefix in claimed) or not _is_block_list(module):
            continue
        if any(is_head(f"{name}.{p}" if name else p, head_pattern) for p, _ in module.named_parameters()):
            continue
        claimed.append(name)
        blocks += [f"{name}.{child}" if name else child
                   for child, module_child in module.named_children() if _holds_parameters(module_child)]
    return blocks


def layer_labels(model: nn.Module, head_pattern: str | None = None) -> dict[str, str]:
    """Layer label of every (deduplicated) parameter of ``model``: its block's position in
    ``block_prefixes`` where the model has a block list, else ``layer_of`` of its name."""
    names = [name for name, _ in model.named_parameters()]
    index = {prefix: i for i, prefix in enumerate(block_prefixes(model, head_pattern))}
    if not index:
        return {name: layer_of(name, head_pattern) for name in names}
    labels = {}
    for name in names:
        parts = name.split(".")
        block = next((index[p] for p in (".".join(parts[:k]) for k in range(1, len(parts))) if p in index), None)
        if is_head(name, head_pattern):
            labels[name] = "head"
        elif block is not None:
            labels[name] = f"layer_{block}"
        elif _EMBED.search(name):
            labels[name] = "embeddings"
        else:
            labels[name] = "other"
    return labels


def layer_rank(label: str) -> tuple:
    """Sort key of a layer label: embeddings first, blocks in depth order (layer_2 before
    layer_10), then any other label alphabetically, head last."""
    if label == "embeddings":
        return (0, 0, "")
    if label.startswith("layer_") and label[len("layer_"):].isdigit():
        return (1, int(label[len("layer_"):]), "")
    if label == "head":
        return (3, 0, "")
    return (2, 0, label)


def layer_order(labels) -> list[str]:
    """The distinct ``labels`` in ``layer_rank`` order."""
    return sorted(set(labels), key=layer_rank)


def num_blocks(names) -> int:
    """Number of transformer blocks seen in a list of parameter names."""
    blocks = {layer_of(n) for n in names if layer_of(n).startswith("layer_")}
    return len(blocks)
