"""Synthetic run sets with hand-picked scores, written as summary.csv / layers.csv.

The first (below) feeds the table and figure tests; the paper-shaped one at the end feeds
the claims table's tests.

Tasks rte, cola, qnli, mnli (two columns) and squad; methods:
  full_finetuning (seeds 0, 1), adapters_64 (seed 0),
  structured_diff_pruning: L0 train runs + prune runs at 0.5% and 1% (seeds 0, 1),
  diff_pruning (unstructured): prune runs at 0.5% and 1% (seed 0).
Every score below is written out literally so that tests can check averages by hand.
"""
from __future__ import annotations

import json

import pandas as pd

# scores[method_key][(phase, rate)][seed] = {column: score}
FULL = {0: {"qnli": 90.0, "mnli_m": 80.0, "mnli_mm": 81.0, "cola": 50.0, "rte": 70.0,
            "squad_em": 70.0, "squad_f1": 80.0},
        1: {"qnli": 92.0, "mnli_m": 82.0, "mnli_mm": 83.0, "cola": 54.0, "rte": 72.0,
            "squad_em": 72.0, "squad_f1": 82.0}}
ADAPTERS = {0: {"qnli": 88.0, "mnli_m": 78.0, "mnli_mm": 79.0, "cola": 40.0, "rte": 60.0}}
STRUCTURED_SOURCE = {0: {"qnli": 89.0, "mnli_m": 79.0, "mnli_mm": 80.0, "cola": 49.0, "rte": 69.0},
                     1: {"qnli": 89.0, "mnli_m": 79.0, "mnli_mm": 80.0, "cola": 51.0, "rte": 71.0}}
STRUCTURED = {
    0.5: {0: {"qnli": 88.0, "mnli_m": 78.0, "mnli_mm": 79.0, "cola": 48.0, "rte": 68.0,
              "squad_em": 68.0, "squad_f1": 78.0},
          1: {"qnli": 90.0, "mnli_m": 80.0, "mnli_mm": 81.0, "cola": 52.0, "rte": 70.0,
              "squad_em": 70.0, "squad_f1": 80.0}},
    1.0: {0: {"qnli": 89.0, "mnli_m": 79.0, "mnli_mm": 80.0, "cola": 49.0, "rte": 69.0},
          1: {"qnli": 89.0, "mnli_m": 79.0, "mnli_mm": 80.0, "cola": 49.0, "rte": 69.0}},
}
UNSTRUCTURED = {0.5: {0: {"qnli": 85.0, "mnli_m": 75.0, "mnli_mm": 76.0, "cola": 45.0, "rte": 65.0}},
                1.0: {0: {"qnli": 86.0, "mnli_m": 76.0, "mnli_mm": 77.0, "cola": 46.0, "rte": 66.0}}}
MAJORITY = {"qnli": 50.0, "mnli_m": 35.0, "mnli_mm": 36.0, "cola": 0.0, "rte": 53.0}
# Projection without finetuning loses exactly 10 points in this synthetic set.
BEFORE_FINETUNE_DROP = 10.0
TASK_COLUMNS = {"qnli": ["qnli"], "mnli": ["mnli_m", "mnli_mm"], "cola": ["cola"], "rte": ["rte"],
                "squad": ["squad_em", "squad_f1"]}
# groups_zero per (method_key, rate, task, seed)
GROUPS_TOTAL = 20
LAYERS = ["embeddings", "layer_0", "layer_1", "head"]


def groups_zero(key: str, rate: float, task: str, seed: int) -> int:
    base = 12 if key == "structured_diff_pruning" else 3
    return base + int(rate) + len(task) + seed


def layer_nonzero(task: str, seed: int) -> dict:
    """nonzero per layer: embeddings 10, layer_0 30 + 10*seed, layer_1 50, head 10 (+len(task))."""
    return {"embeddings": 10, "layer_0": 30 + 10 * seed, "layer_1": 50, "head": 10 + len(task)}


def _row(task, key, method, phase, rate, seed, scores, structured=None, **extra):
    row = {"run_dir": f"{task}/{key}/" + (f"rate{rate}/" if phase == "prune" else "") + f"seed{seed}",
           "task": task, "method_key": key, "method": method, "phase": phase, "rate": rate, "seed": seed,
           "model_id": "tiny", "new_params_pct": 100.0 if method == "full_finetuning" else (rate or 3.0),
           "seconds_per_step": 1.0, "peak_memory_bytes": 100 * 2**20, "bytes_per_task": 4_000_000,
           "pretrained_params": 1_000_000, "device": "cpu", "dataset_note": "",
           "train_examples": 100, "train_examples_total": 100, "dev_examples": 50,
           "config.name": "synthetic"}
    if structured is not None:
        row["config.method_options.structured"] = structured
    for column in TASK_COLUMNS[task]:
        if column in scores:
            row[f"scores.{column}"] = scores[column]
        if task != "squad":
            row[f"majority_scores.{column}"] = MAJORITY[column]
    row.update(extra)
    return row


def synthetic_rows() -> list[dict]:
    rows = []
    for task in TASK_COLUMNS:
        for seed, scores in FULL.items():
            rows.append(_row(task, "full_finetuning", "full_finetuning", "train", None, seed, scores,
                             seconds_per_step=1.0, bytes_per_task=4_000_000,
                             dataset_note="SQuAD v1.1 dev, article split" if task == "squad" else ""))
        for seed, scores in ADAPTERS.items():
            if task != "squad":
                rows.append(_row(task, "adapters_64", "adapters", "train", None, seed, scores,
                                 seconds_per_step=0.8, bytes_per_task=400_000))
        for seed, scores in STRUCTURED_SOURCE.items():
            if task != "squad":
                rows.append(_row(task, "structured_diff_pruning", "diff_pruning", "train", None, seed, scores,
                                 structured=True, seconds_per_step=2.0, nonzeros=5_000, diffed_params=1_000_000))
        for variant, key, table in ((True, "structured_diff_pruning", STRUCTURED),
                                    (False, "diff_pruning", UNSTRUCTURED)):
            for rate, by_seed in table.items():
                for seed, scores in by_seed.items():
                    if not any(c in scores for c in TASK_COLUMNS[task]):
                        continue
                    # Both variants start from the same synthetic source scores.
                    source = STRUCTURED_SOURCE.get(seed, {})
                    extra = {f"before_finetune.scores.{c}": scores[c] - BEFORE_FINETUNE_DROP
                             for c in TASK_COLUMNS[task] if c in scores}
                    extra.update({f"source_scores.{c}": source[c] for c in TASK_COLUMNS[task] if c in source})
                    rows.append(_row(task, key, "diff_pruning", "prune", rate, seed, scores, structured=variant,
                                     groups_total=GROUPS_TOTAL, groups_zero=groups_zero(key, rate, task, seed),
                                     seconds_per_step=1.5, bytes_per_task=40_000, **extra))
    return rows


def synthetic_layers(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, run in summary.iterrows():
        if run["method"] == "diff_pruning" and run["phase"] == "prune":
            for index, (layer, nonzero) in enumerate(layer_nonzero(run["task"], run["seed"]).items()):
                rows.append({"run_dir": run["run_dir"], "task": run["task"], "method_key": run["method_key"],
                             "method": run["method"], "phase": "prune", "rate": run["rate"], "seed": run["seed"],
                             "layer": layer, "layer_index": index, "numel": 1000, "nonzero": nonzero})
        if run["method"] == "full_finetuning":
            for index, layer in enumerate(LAYERS):
                rows.append({"run_dir": run["run_dir"], "task": run["task"], "method_key": run["method_key"],
                             "method": run["method"], "phase": "train", "rate": None, "seed": run["seed"],
                             "layer": layer, "layer_index": index,
                             "relative_l2": 0.01 * (index + 1) + 0.001 * run["seed"],
                             "angle_deg": 0.5 * (index + 1)})
    return pd.DataFrame(rows)


def write_metrics(run_dir, metrics: dict, stats: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if stats is not None:
        (run_dir / "stats.json").write_text(json.dumps(stats))


# ----------------------------------------------------------------------------- paper-shaped run set
# A second synthetic run set, shaped so that every claim of the paper holds (the claims
# table's tests change one thing at a time to make one claim fail, or drop runs to make it
# untestable). Score = task base + method offset (+ rate) + seed noise; SQuAD F1 of diff
# pruning gets SQUAD_BONUS on top, so that it beats full finetuning at 1%.
PAPER_TASKS = {"sst2": (0, 1, 2), "cola": (0,), "rte": (0,), "squad": (0,)}
PAPER_BASE = {"sst2": 90.0, "cola": 50.0, "rte": 65.0, "squad_em": 70.0, "squad_f1": 80.0}
PAPER_RATES = (0.1, 0.25, 0.5, 1.0)
# (method_key, rate) -> offset from full finetuning, points. Gaps structured - non-adaptive:
# 9.5 / 6.5 / 4.8 / 3.1 (widest at 0.1%); structured rises with the rate and is 0.1 above
# full finetuning at 1%.
PAPER_OFFSETS = {
    ("full_finetuning", None): 0.0, ("last_layer", None): -12.0, ("adapters_64", None): -0.5,
    **{("structured_diff_pruning", r): o for r, o in zip(PAPER_RATES, (-2.5, -0.5, -0.2, 0.1))},
    **{("diff_pruning", r): o for r, o in zip(PAPER_RATES, (-4.0, -1.5, -1.2, -0.5))},
    **{("nonadaptive_diff_pruning", r): o for r, o in zip(PAPER_RATES, (-12.0, -7.0, -5.0, -3.0))},
}
PAPER_METHODS = {"full_finetuning": "full_finetuning", "last_layer": "last_layer", "adapters_64": "adapters",
                 "structured_diff_pruning": "diff_pruning", "diff_pruning": "diff_pruning",
                 "nonadaptive_diff_pruning": "nonadaptive_diff_pruning"}
SEED_NOISE = {0: 0.0, 1: 1.0, 2: 2.0}       # every row's per-seed averages: std 1.0 over 3 seeds
SQUAD_BONUS = 1.0
SOURCE_ABOVE_FINAL = 0.5                     # fixed-mask finetuning recovers to within 0.5 points
PROJECTION_DROP = 10.0                       # right after projection, before the fixed-mask phase
PAPER_GROUPS_TOTAL = 20
PAPER_GROUPS_ZERO = {"structured_diff_pruning": 15, "diff_pruning": 3, "nonadaptive_diff_pruning": 1}
# layer -> numel; head trained densely (nonzero = numel, left out of the profiles)
PAPER_LAYER_NUMEL = {"embeddings": 1000, "layer_0": 500, "layer_1": 500, "head": 50}


def paper_layer_nonzero(task: str, seed: int) -> dict:
    """Embeddings barely touched; SST-2 and RTE spend most in layer_0, CoLA in layer_1."""
    return {"sst2": {"embeddings": 1, "layer_0": 60 + seed, "layer_1": 20, "head": 50},
            "cola": {"embeddings": 1, "layer_0": 10, "layer_1": 70, "head": 50},
            "rte": {"embeddings": 2, "layer_0": 50, "layer_1": 30, "head": 50},
            "squad": {"embeddings": 1, "layer_0": 40, "layer_1": 40, "head": 50}}[task]


def paper_shaped_rows(offsets: dict | None = None) -> list[dict]:
    """Final runs only (train-phase runs of projected methods are not read by the claims)."""
    offsets = {**PAPER_OFFSETS, **(offsets or {})}
    rows = []
    for (key, rate), offset in offsets.items():
        method = PAPER_METHODS[key]
        for task, seeds in PAPER_TASKS.items():
            for seed in seeds:
                columns = ["squad_em", "squad_f1"] if task == "squad" else [task]
                bonus = SQUAD_BONUS if task == "squad" and "diff_pruning" in key else 0.0
                scores = {c: PAPER_BASE[c] + offset + bonus + SEED_NOISE[seed] for c in columns}
                row = {"run_dir": f"{task}/{key}/" + (f"rate{rate}/" if rate else "") + f"seed{seed}",
                       "task": task, "method_key": key, "method": method,
                       "phase": "prune" if rate else "train", "rate": rate, "seed": seed, "model_id": "tiny",
                       **{f"scores.{c}": v for c, v in scores.items()}}
                if method == "diff_pruning":
                    row["config.method_options.structured"] = key == "structured_diff_pruning"
                if rate:
                    row.update({f"source_scores.{c}": v + SOURCE_ABOVE_FINAL for c, v in scores.items()})
                    row.update({f"before_finetune.scores.{c}": v - PROJECTION_DROP for c, v in scores.items()})
                    row.update(groups_total=PAPER_GROUPS_TOTAL, groups_zero=PAPER_GROUPS_ZERO[key])
                rows.append(row)
    return rows


def paper_shaped_layers(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, run in summary[summary["phase"] == "prune"].iterrows():
        for index, (layer, nonzero) in enumerate(paper_layer_nonzero(run["task"], run["seed"]).items()):
            rows.append({"run_dir": run["run_dir"], "task": run["task"], "method_key": run["method_key"],
                         "method": run["method"], "phase": "prune", "rate": run["rate"], "seed": run["seed"],
                         "layer": layer, "layer_index": index, "numel": PAPER_LAYER_NUMEL[layer],
                         "nonzero": nonzero})
    return pd.DataFrame(rows)
