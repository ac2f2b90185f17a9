"""LoRA (Hu et al., 2022) via ``peft``: low-rank updates B @ A on chosen projections, head dense.

``prepare`` returns a ``peft.PeftModel`` wrapping the model; its ``forward(**batch)`` passes
straight through to the Hugging Face model (labels -> loss as usual). peft injects the LoRA
layers into the original model in place, so the wrapped model's parameter names gain a
``base_model.model.`` prefix and the targeted linears become ``<name>.base_layer`` plus
``<name>.lora_A.default`` / ``<name>.lora_B.default``.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from baselines.common import (check_learning_rate, check_positive_int, decay_groups, head_parameter_names,
                              save_tensors, trainable_named_parameters)
from diffprune.methods import Method


class LoRA(Method):
    name = "lora"

    @classmethod
    def option_defaults(cls) -> dict:
        # Defaults follow the LoRA paper's GLUE setup for RoBERTa-base (Table 9).
        return {
            "rank": 8,                              # r of the low-rank update
            "lora_alpha": 8,                        # update scaled by alpha / r (1 here, as in the paper)
            "target_modules": ["query", "value"],   # W_q and W_v only, the paper's choice
            "lora_dropout": 0.0,                    # dropout on the LoRA branch input
            # LoRA trains at a much larger rate than full finetuning (paper: 4e-4 .. 5e-4 for
            # RoBERTa-base). Applies to A, B and the head. null = the run's learning rate.
            "learning_rate": 5e-4,
        }

    def __init__(self, **options) -> None:
        super().__init__(**options)
        check_positive_int(self.name, "rank", self.options["rank"])
        check_learning_rate(self.name, "learning_rate", self.options["learning_rate"])
        targets = self.options["target_modules"]
        if isinstance(targets, str) or not targets or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"lora: target_modules must be a non-empty list of module names, got {targets!r}")
        if not 0.0 <= float(self.options["lora_dropout"]) < 1.0:
            raise ValueError(f"lora: lora_dropout must be in [0, 1), got {self.options['lora_dropout']}")

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        from peft import LoraConfig, get_peft_model  # heavy; only loaded when this method is used

        head_parameter_names(model, head_pattern)  # fail early on a head regex that matches nothing
        config = LoraConfig(
            r=self.options["rank"],
            lora_alpha=self.options["lora_alpha"],
            target_modules=list(self.options["target_modules"]),
            lora_dropout=float(self.options["lora_dropout"]),
            bias="none",
            # No task_type: peft would then wrap the head in a ModulesToSaveWrapper (a trained
            # copy beside a frozen original). Unfreezing the head in place is simpler and
            # keeps one head tensor per name, as in every other method.
        )
        wrapped = get_peft_model(model, config)
        self.lora_names = sorted(n for n, p in wrapped.named_parameters() if p.requires_grad)
        if not self.lora_names:
            raise RuntimeError(f"lora: no module matched target_modules {self.options['target_modules']}")
        self.head_names = head_parameter_names(wrapped, head_pattern)
        for name, param in wrapped.named_parameters():
            if name in self.head_names:
                param.requires_grad_(True)
        self.peft_config = config
        return wrapped

    def parameter_groups(self, model: nn.Module, training: dict) -> list[dict]:
        lr = check_learning_rate(self.name, "learning_rate", self.options["learning_rate"])
        return decay_groups(trainable_named_parameters(model), float(training.get("weight_decay", 0.0)), lr)

    def export(self, model: nn.Module, out_dir) -> dict[str, str]:
        params = dict(model.named_parameters())
        file_name = save_tensors({n: params[n] for n in self.lora_names + self.head_names}, out_dir,
                                 "lora.safetensors", method=self.name, options=self.options)
        config_name = "lora_config.json"
        (Path(out_dir) / config_name).write_text(
            json.dumps(self.peft_config.to_dict(), indent=2, sort_keys=True, default=str))
        return {"lora": file_name, "config": config_name}
