"""BitFit (Ben Zaken et al., 2022): only the bias terms of the pretrained model (+ the head) train.

"Bias terms" are all parameters named ``bias``, LayerNorm biases included, as in BitFit.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffprune.baselines.common import SubsetFinetuning, check_learning_rate, decay_groups, trainable_named_parameters
from diffprune.layers import is_head
from diffprune.method_options import option


class BitFit(SubsetFinetuning):
    name = "bitfit"
    summary = "biases and the head train (baselines/bitfit.py)"

    @dataclass(frozen=True)
    class Options:
        # Biases need far larger steps than full finetuning's 2e-5: the BitFit paper
        # searched {1e-4, 4e-4, 7e-4, 1e-3}; we take the top of that grid because our
        # budgets are short.
        learning_rate: float | None = option(1e-3, "overrides the run's learning_rate; null = the run's", gt=0)

    def select(self, model: nn.Module, head_pattern: str) -> set[str]:
        return {n for n, _ in model.named_parameters()
                if n.rsplit(".", 1)[-1] == "bias" and not is_head(n, head_pattern)}

    def nothing_selected(self) -> str:
        return ("bitfit trains the bias terms, and this model has no bias parameters outside its head "
                "(Llama-style models have none): choose another method for it, e.g. lora or adapters")

    def parameter_groups(self, model: nn.Module, training: dict) -> list[dict]:
        lr = check_learning_rate(self.name, "learning_rate", self.options["learning_rate"])
        return decay_groups(trainable_named_parameters(model), float(training.get("weight_decay", 0.0)), lr)
