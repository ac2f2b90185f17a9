"""Last-layer finetuning: only the top block (+ the final norm / pooler above it) and the head train.

The paper: "only finetunes the penultimate layer (along with the final output layer)", i.e.
the last pretrained block under the new classifier. "The top block" is the last entry of
the model's own block list (``diffprune.layers.block_prefixes``: BERT's ``encoder.layer``,
Llama's ``model.layers``, ...). What sits between that block and the head trains with it:
a final normalisation after the last block (Llama's ``model.norm``, GPT-2's ``ln_f``) always,
since the head reads its output, and BERT's pooler by default (option ``include_pooler``).
``report()`` (metrics.json's ``method_report``) names what was trained on this model.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from torch import nn

from diffprune.baselines.common import SubsetFinetuning
from diffprune.layers import block_prefixes, is_head, is_layer_norm
from diffprune.method_options import option

logger = logging.getLogger(__name__)

_POOLER = re.compile(r"(^|\.)pooler(\.|$)")


def _under(name: str, prefix: str) -> bool:
    return name.startswith(prefix + ".")


class LastLayer(SubsetFinetuning):
    name = "last_layer"
    summary = ("the top block and the head train (baselines/last_layer.py); a final norm after the top block "
               "trains too")

    @dataclass(frozen=True)
    class Options:
        # The pooler is a pretrained dense layer between the top block and the classifier.
        # Note: the paper's 3.8% on BERT-large matches the top block alone (12.6M of 335M);
        # set false to reproduce that count.
        include_pooler: bool = option(True, "train the pooler between the top block and the head, where the "
                                      "model has one")

    def selection_metadata(self) -> dict:
        return {"top_block": self.top_block}

    def report(self) -> dict:
        return self.trained

    def nothing_selected(self) -> str:
        return ("last_layer found no block list in this model (a ModuleList / Sequential of repeated "
                "blocks, e.g. encoder.layer or model.layers), so it has no \"last layer\"; choose "
                "another method for it")

    def select(self, model: nn.Module, head_pattern: str) -> set[str]:
        blocks = block_prefixes(model, head_pattern)
        if not blocks:
            return set()
        top = blocks[-1]
        order = [n for n, _ in model.named_parameters()]
        chosen = {n for n in order if _under(n, top)}
        last_block_position = max(i for i, n in enumerate(order) if n in chosen)
        position = {n: i for i, n in enumerate(order)}

        # Norms after the last block and outside every block (BERT's embedding LayerNorm comes
        # before the blocks, a T5 encoder's final norm before the decoder's last block).
        final_norms = []
        for module_name, module in model.named_modules():
            if not module_name or not is_layer_norm(module) or any(_under(module_name, b) for b in blocks):
                continue
            own = [f"{module_name}.{p}" for p, _ in module.named_parameters()]
            own = [n for n in own if n in position and not is_head(n, head_pattern)]
            if own and min(position[n] for n in own) > last_block_position:
                final_norms.append(module_name)
                chosen |= set(own)

        poolers = sorted({n.rsplit(".", 1)[0] for n in order if _POOLER.search(n) and not is_head(n, head_pattern)})
        if self.options["include_pooler"]:
            chosen |= {n for n in order if _POOLER.search(n) and not is_head(n, head_pattern)}
            if not poolers:
                logger.warning("last_layer: include_pooler is set but the model has no pooler; "
                               "trained the top block %s and its final norm only", top)
        self.top_block = f"layer_{len(blocks) - 1}"
        self.trained = {
            "top_block": self.top_block, "top_block_module": top, "final_norm": final_norms,
            "pooler": poolers if self.options["include_pooler"] else [],
            "note": ("include_pooler: the model has no pooler" if self.options["include_pooler"] and not poolers
                     else ""),
        }
        return chosen
