"""LoRA (Hu et al., 2022) via ``peft``: low-rank updates B @ A on chosen projections, head dense.

``prepare`` returns a ``peft.PeftModel`` wrapping the model; its ``forward(**batch)`` passes
straight through to the Hugging Face model (labels -> loss as usual). peft injects the LoRA
layers into the original model in place, so the wrapped model's parameter names gain a
``base_model.model.`` prefix and the targeted linears become ``<name>.base_layer`` plus
``<name>.lora_A.default`` / ``<name>.lora_B.default``.

``target_modules`` null (the default) takes PEFT's usual targets for the model's
``model_type`` (``query``/``value`` on BERT, ``q_proj``/``v_proj`` on Llama: W_q and W_v, the
paper's choice); a list names them explicitly. Targets that match no module of the model are
refused when the run is planned. A task stores the LoRA factors and the head (what trains,
``Method.save``); ``prepare`` on a fresh base rebuilds the same wrapped model to load them into.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffprune.baselines.common import check_learning_rate, decay_groups, head_parameter_names, trainable_named_parameters
from diffprune.method_options import option
from diffprune.methods import Method

# Module types PEFT's LoRA can wrap (transformers' GPT-2 style Conv1D by class name).
_LORA_LAYER_TYPES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def _lora_capable(module: nn.Module) -> bool:
    return isinstance(module, _LORA_LAYER_TYPES) or type(module).__name__ == "Conv1D"


def _matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the module's name or its last dotted parts."""
    return module_name == target or module_name.endswith("." + target)


class LoRA(Method):
    name = "lora"
    summary = "low-rank updates through PEFT (baselines/lora.py)"

    @dataclass(frozen=True)
    class Options:
        # Defaults follow the LoRA paper's GLUE setup for RoBERTa-base (Table 9).
        rank: int = option(8, "rank r of the update", ge=1)
        # alpha / r = 1, as in the paper.
        lora_alpha: float = option(8, "the update is scaled by lora_alpha / rank", gt=0)
        target_modules: list[str] | None = option(
            None, "module names to wrap; null = PEFT's default for the model type ([query, value] on BERT); "
                  "names matching no layer are refused at planning", min_items=1)
        lora_dropout: float = option(0.0, "dropout on the LoRA branch input", ge=0, lt=1)
        # LoRA trains at a much larger rate than full finetuning (paper: 4e-4 .. 5e-4 for
        # RoBERTa-base); it applies to A, B and the head.
        learning_rate: float | None = option(5e-4, "overrides the run's learning_rate; null = the run's", gt=0)

    def target_modules(self, model: nn.Module, head_pattern: str) -> list[str]:
        """The option's list, or PEFT's default for the model type; each must match a layer
        LoRA can wrap outside the head (ValueError naming the candidates otherwise)."""
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        head = set(head_parameter_names(model, head_pattern))
        capable = [name for name, module in model.named_modules()
                   if name and _lora_capable(module) and not any(p.startswith(name + ".") for p in head)]
        leaf_names = sorted({name.rsplit(".", 1)[-1] for name in capable})
        targets = self.options["target_modules"]
        if targets is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
            if targets is None:
                raise ValueError(f"lora: PEFT has no default target modules for model type {model_type!r}; set "
                                 f"target_modules to some of this model's layers: {leaf_names}")
        unmatched = [t for t in targets if not any(_matches(name, t) for name in capable)]
        if unmatched:
            raise ValueError(f"lora: target_modules {unmatched} match no layer of this model; set target_modules "
                             f"(or null for the model type's default) to some of: {leaf_names}")
        return list(targets)

    def check_model(self, model: nn.Module, head_pattern: str) -> None:
        self.target_modules(model, head_pattern)

    def report(self) -> dict:
        return {"target_modules": self.resolved_targets}

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        from peft import LoraConfig, get_peft_model  # heavy; only loaded when this method is used

        head = head_parameter_names(model, head_pattern)
        self.resolved_targets = self.target_modules(model, head_pattern)
        config = LoraConfig(
            r=self.options["rank"],
            lora_alpha=self.options["lora_alpha"],
            target_modules=self.resolved_targets,
            lora_dropout=float(self.options["lora_dropout"]),
            bias="none",
            # No task_type: peft would then wrap the head in a ModulesToSaveWrapper (a trained
            # copy beside a frozen original). Unfreezing the head in place is simpler and
            # keeps one head tensor per name, as in every other method.
        )
        wrapped = get_peft_model(model, config)
        self.lora_names = sorted(n for n, p in wrapped.named_parameters() if p.requires_grad)
        if not self.lora_names:
            raise RuntimeError(f"lora: no module matched target_modules {self.resolved_targets}")
        # The head pattern names the unwrapped model's parameters; peft prefixes them all alike.
        wrapped_names = {id(p): n for n, p in wrapped.named_parameters()}
        unwrapped = dict(model.named_parameters())
        self.head_names = [wrapped_names[id(unwrapped[n])] for n in head]
        for name, param in wrapped.named_parameters():
            if name in self.head_names:
                param.requires_grad_(True)
        self.peft_config = config
        return wrapped

    def parameter_groups(self, model: nn.Module, training: dict) -> list[dict]:
        lr = check_learning_rate(self.name, "learning_rate", self.options["learning_rate"])
        return decay_groups(trainable_named_parameters(model), float(training.get("weight_decay", 0.0)), lr)
