"""Houlsby et al. (2019) bottleneck adapters, via AdapterHub's ``adapters`` library.

Two adapters per transformer block (after the attention output and after the FFN output,
AdapterHub's ``DoubleSeqBnConfig`` = "double_seq_bn"), each a down-projection to
``bottleneck`` units, a nonlinearity and an up-projection with a residual connection.
Houlsby also trains the layer normalisation parameters per task; so do we by default.
The pretrained weights stay frozen.

``adapters.init`` rewires the model in place (same class name, same ``forward`` signature,
``model(**batch)`` with labels still returns the loss); the adapter named ``ADAPTER_NAME``
is active in every forward pass after ``prepare``. A task stores what trains (adapter
weights, the per-task layer norms, the head; ``Method.save``) under the adapter-initialised
model's names, which ``prepare`` on a fresh base builds again.
"""
from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass

from torch import nn

from diffprune.baselines.common import check_learning_rate, decay_groups, head_parameter_names, trainable_named_parameters
from diffprune.layers import is_layer_norm
from diffprune.method_options import option
from diffprune.methods import Method

logger = logging.getLogger(__name__)

ADAPTER_NAME = "task"


def _reduction_factor(hidden_size: int, bottleneck: int) -> float:
    """AdapterHub sizes the bottleneck as int(hidden // factor); find the factor giving ``bottleneck``."""
    factor = hidden_size / bottleneck
    # Floating-point division can land just above the exact quotient (e.g. 16 // (16/3) == 2.0);
    # step down one ulp at a time until the library's formula gives the requested size.
    for _ in range(4):
        if int(hidden_size // factor) == bottleneck:
            return factor
        factor = math.nextafter(factor, 0.0)
    raise ValueError(f"cannot express bottleneck {bottleneck} for hidden size {hidden_size}")


def _has_adapter_modeling(module_name: str) -> bool:
    """Whether the adapters library ships a modeling module for this model type."""
    try:
        return importlib.util.find_spec(f"adapters.models.{module_name}.modeling_{module_name}") is not None
    except ModuleNotFoundError:  # not even the package adapters.models.<module_name> exists
        return False


class HoulsbyAdapters(Method):
    name = "adapters"
    summary = "Houlsby adapters through AdapterHub (baselines/adapters.py)"

    @dataclass(frozen=True)
    class Options:
        # Bottleneck width m: 2 * (2*m*h + m + h) new parameters per block (h = hidden
        # size). Houlsby's BERT-large runs used m in {8, 64, 256}: 3.6% / 2.1% new params.
        bottleneck: int = option(64, "bottleneck width m", ge=1)
        # Houlsby trains the (pretrained) layer norms per task as well.
        train_layer_norms: bool = option(True, "train the pretrained layer norms too, as Houlsby")
        # Adapters train poorly at full finetuning's 2e-5; 1e-4 is AdapterHub's default and
        # inside Houlsby's search range {3e-5 .. 3e-3}.
        learning_rate: float | None = option(1e-4, "overrides the run's learning_rate for adapters, layer norms "
                                             "and head; null = the run's", gt=0)
        # AdapterHub's Houlsby default.
        non_linearity: str = option("swish", "nonlinearity inside the bottleneck")


    def check_model(self, model: nn.Module, head_pattern: str) -> None:
        from adapters.wrappers.interfaces import get_adapter_interface
        from adapters.wrappers.model import get_module_name

        head_parameter_names(model, head_pattern)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type is None:
            raise ValueError("adapters (AdapterHub) needs a Hugging Face transformers model with a config; "
                             "choose another method for this model")
        name = get_module_name(model_type)
        if get_adapter_interface(model_type) is None and not _has_adapter_modeling(name):
            raise ValueError(f"the adapters library does not support model type {model_type!r}; choose another "
                             "method (e.g. lora) for this model")
        _reduction_factor(model.config.hidden_size, self.options["bottleneck"])

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        import adapters  # heavy; only loaded when this method is used

        head = set(head_parameter_names(model, head_pattern))
        hidden_size = model.config.hidden_size
        bottleneck = self.options["bottleneck"]
        config = adapters.DoubleSeqBnConfig(reduction_factor=_reduction_factor(hidden_size, bottleneck),
                                            non_linearity=self.options["non_linearity"])
        adapters.init(model)
        model.add_adapter(ADAPTER_NAME, config=config)
        # Freezes the whole model, unfreezes the adapter and activates it for every forward.
        model.train_adapter(ADAPTER_NAME)
        self.adapter_names = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in head)
        if not self.adapter_names:
            raise RuntimeError("adapters: add_adapter created no trainable adapter parameters")

        layer_norms = set()
        if self.options["train_layer_norms"]:
            adapter_set = set(self.adapter_names)
            for module_name, module in model.named_modules():
                if is_layer_norm(module):
                    for param_name, _ in module.named_parameters(recurse=False):
                        full = f"{module_name}.{param_name}" if module_name else param_name
                        if full not in adapter_set and full not in head:
                            layer_norms.add(full)
        self.layer_norm_names = sorted(layer_norms)
        if self.options["train_layer_norms"] and not layer_norms:
            logger.warning("adapters: train_layer_norms is set but the model has no layer / RMS norm "
                           "outside the head; only adapters and head train")
        self.head_names = sorted(head)
        keep = set(self.adapter_names) | layer_norms | head
        for name, param in model.named_parameters():
            param.requires_grad_(name in keep)
        return model

    def report(self) -> dict:
        return {"layer_norms": self.layer_norm_names, "adapter_parameters": len(self.adapter_names)}

    def parameter_groups(self, model: nn.Module, training: dict) -> list[dict]:
        lr = check_learning_rate(self.name, "learning_rate", self.options["learning_rate"])
        return decay_groups(trainable_named_parameters(model), float(training.get("weight_decay", 0.0)), lr)
