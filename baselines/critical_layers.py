"""Critical-layer finetuning (Radiya-Dixit & Wang, "How fine can fine-tuning be?").

Full finetuning moves some layers much further from the pretrained weights than others;
finetuning only the k most-moved ("critical") layers, plus the head, is reported to suffice.
The ranking comes from a full-finetuning run: its ``stats.json`` holds
``per_layer_distance: {layer label: {"relative_l2": x, "angle_deg": y}}`` with labels as in
``diffprune.layers``; the embeddings and the transformer blocks (layer_0 .. layer_{L-1})
compete. Alternatively name the layers explicitly with ``layers`` (any label but head).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from diffprune.baselines.common import SubsetFinetuning
from diffprune.layers import layer_labels, layer_order
from diffprune.method_options import option

RankingMetric = Literal["relative_l2", "angle_deg"]  # the distances full finetuning's stats.json holds
RANKED_KINDS = ("embeddings",)  # besides the transformer blocks layer_0 .. layer_{L-1}


class CriticalLayers(SubsetFinetuning):
    name = "critical_layers"
    # Not a `reuses` method (it trains on its own) but its ranking needs a finished
    # full_finetuning run of the same task and seed: the workflow makes this run wait for it
    # and `train --from` puts its directory into the `ranking` option.
    needs_run = "full_finetuning"
    run_option = "ranking"
    summary = "the layers full finetuning moved furthest train (baselines/critical_layers.py)"

    @classmethod
    def needs_run_for(cls, options: dict) -> bool:
        return options.get("layers") is None and super().needs_run_for(options)

    @dataclass(frozen=True)
    class Options:
        num_layers: int = option(2, "how many of the most-moved layers train", ge=1)
        ranking: str | None = option(None, "a full_finetuning run's stats.json or run directory; null = the "
                                     "workflow's full_finetuning run of the same task and seed")
        ranking_metric: RankingMetric = option("relative_l2", "the distance that ranks the layers")
        layers: list[str] | None = option(None, "explicit layer labels such as [layer_4, layer_5]; overrides "
                                          "the ranking", min_items=1)

    def __init__(self, **options) -> None:
        super().__init__(**options)  # types and ranges: Options
        if self.options["layers"] is None and self.options["ranking"] is None:
            raise ValueError(
                "critical_layers needs to know which layers to finetune: give `ranking` (the stats.json "
                "of a full_finetuning run of the same task, whose per_layer_distance ranks the layers) "
                "or an explicit `layers` list such as ['layer_4', 'layer_5']"
            )

    def ranked_layers(self, available: set[str]) -> list[str]:
        """Layer labels present in the model, most-moved first, read from the ranking file."""
        path = Path(self.options["ranking"])
        if path.is_dir():
            path = path / "stats.json"
        if not path.is_file():
            raise FileNotFoundError(f"critical_layers: ranking file {path} does not exist")
        stats = json.loads(path.read_text())
        distances = stats.get("per_layer_distance")
        if not isinstance(distances, dict) or not distances:
            raise ValueError(f"critical_layers: {path} has no per_layer_distance block "
                             "(is it a full_finetuning run's stats.json?)")
        metric = self.options["ranking_metric"]
        scored = []
        for label, values in distances.items():
            # Only real layers compete: the head is new and always trains, and "other" is a
            # catch-all label (BERT's pooler) rather than a layer of the encoder. An explicit
            # `layers` list may still name it.
            competes = label in RANKED_KINDS or label.startswith("layer_")
            if not competes or label not in available:
                continue
            value = float(values[metric])
            if not math.isfinite(value):
                raise ValueError(f"critical_layers: {metric} of {label} in {path} is {value}")
            scored.append((value, label))
        if not scored:
            raise ValueError(f"critical_layers: none of the layers in {path} exist in this model")
        # Ties broken by depth order so the choice is deterministic.
        order = {l: i for i, l in enumerate(layer_order(available))}
        scored.sort(key=lambda item: (-item[0], order[item[1]]))
        return [label for _, label in scored]

    def selection_metadata(self) -> dict:
        return {"chosen_layers": self.chosen_layers}

    def artifact_options(self) -> dict:
        # The ranking is another run's file, which may be gone when the artifact is loaded:
        # the layers it chose rebuild the same model on their own.
        return {**self.options, "layers": self.chosen_layers, "ranking": None}

    def select(self, model: nn.Module, head_pattern: str) -> set[str]:
        labels = layer_labels(model, head_pattern)
        available = set(labels.values()) - {"head"}
        if self.options["layers"] is not None:
            chosen = list(dict.fromkeys(self.options["layers"]))
            unknown = [l for l in chosen if l not in available]
            if unknown:
                raise ValueError(f"critical_layers: layers {unknown} not in the model; it has {layer_order(available)}")
        else:
            k = self.options["num_layers"]
            ranked = self.ranked_layers(available)
            if len(ranked) < k:
                raise ValueError(f"critical_layers: num_layers={k} but the ranking covers only {ranked}")
            chosen = ranked[:k]
        self.chosen_layers = layer_order(chosen)
        return {n for n, label in labels.items() if label in set(chosen)}
