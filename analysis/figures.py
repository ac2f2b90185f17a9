"""The paper's figures 1-3 and a weight-distance figure, from ``summary.csv`` and
``layers.csv``. Each figure is written as PNG and PDF, plus a CSV of exactly the numbers it
plots (so a reader can check a bar without reading pixels).

A figure the run set has nothing for (no structured diff pruning, no task with several
seeds, no per-layer distances) is skipped with a note, never drawn empty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on build machines; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from diffprune.analysis.output import save_figure, write_csv  # noqa: E402
from diffprune.analysis.runset import (FULL_FINETUNING, AnalysisError, chosen_rate,  # noqa: E402
                             column_title, diff_pruning_variant, display_name, final_runs,
                             format_percent, is_full_finetuning, layer_counts, ordered_layers,
                             require_columns,
                             score_columns, summarise_scores)
from diffprune.analysis.tables import Skipped  # noqa: E402
from diffprune.rungraph import rate_label  # noqa: E402


PREFERRED_SEED_TASK = "sst2"  # the paper's Figure 3 shows SST-2 runs


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    figure: matplotlib.figure.Figure
    data: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def files(self) -> list[str]:
        return [f"{self.name}.png", f"{self.name}.pdf", f"{self.name}.csv"]

    def write(self, out_dir) -> list[Path]:
        out_dir = Path(out_dir)
        try:
            return [save_figure(self.figure, out_dir / f"{self.name}.png"),
                    save_figure(self.figure, out_dir / f"{self.name}.pdf"),
                    write_csv(out_dir / f"{self.name}.csv", self.data)]
        finally:
            plt.close(self.figure)


def _style() -> None:
    sns.set_theme(style="whitegrid", context="paper", palette="colorblind", font_scale=1.1)


def _score_average_columns(runs: pd.DataFrame) -> list[str]:
    """GLUE (and other non-SQuAD) columns; SQuAD F1 alone when the run set is SQuAD only."""
    columns = score_columns(runs)
    if columns:
        return columns
    return ["squad_f1"] if "scores.squad_f1" in runs.columns and runs["scores.squad_f1"].notna().any() else []


# ----------------------------------------------------------------------------- Figure 1 left

def figure1_average_vs_rate(summary: pd.DataFrame) -> Figure:
    """Average score against target sparsity rate, one line per projected method (error bars:
    std over seeds of per-seed averages), full finetuning as a horizontal reference."""
    runs = final_runs(summary)
    projected = runs[runs["phase"] == "prune"]
    if projected.empty:
        raise Skipped("no prune-phase runs: no method has a sparsity rate to plot against")
    if not any(c.startswith("scores.") for c in summary.columns):
        raise AnalysisError("summary lacks scores.<column> columns: nothing to average")
    full = runs[is_full_finetuning(runs)]
    # The other dense methods are single points at their natural budget (new params / task).
    baselines = runs[(runs["phase"] == "train") & ~is_full_finetuning(runs)]
    if "new_params_pct" in baselines.columns:
        baselines = baselines[baselines["new_params_pct"].gt(0)]
    else:
        baselines = baselines.iloc[0:0]
    plotted = pd.concat([projected, baselines, full])
    columns = _score_average_columns(plotted)
    # Average only over tasks every plotted row has, so that the lines are comparable.
    has = {row: {c for c in columns if group[f"scores.{c}"].notna().any()} for row, group in plotted.groupby("row")}
    common = [c for c in columns if all(c in cols for cols in has.values())]
    if not common:
        raise Skipped("no score column shared by every projected method and rate (and full finetuning)")
    notes = []
    if len(common) < len(columns):
        notes.append(f"averaged over the {len(common)} columns every line has "
                     f"({', '.join(map(column_title, common))}); left out: "
                     f"{', '.join(column_title(c) for c in columns if c not in common)}")
    stats = summarise_scores(plotted, common, common)
    meta = plotted.groupby("row").agg(method_key=("method_key", "first"), method=("method", "first"),
                                      rate=("rate", "first"))
    if "new_params_pct" in plotted.columns:
        # budgets from the runs that are averaged (a SQuAD head has another size)
        averaged = plotted[plotted[[f"scores.{c}" for c in common]].notna().any(axis=1)]
        meta["new_params_pct"] = averaged.groupby("row")["new_params_pct"].mean()
    else:
        meta["new_params_pct"] = np.nan
    meta["natural_budget"] = meta["method_key"].isin(set(baselines["method_key"]))
    data = meta.join(stats.set_index("row"))[["method_key", "method", "rate", "new_params_pct", "natural_budget",
                                              "avg", "avg_std", "avg_n"]].reset_index()

    _style()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    rates = sorted(projected["rate"].dropna().unique())
    for key, line in data[data["method"].ne(FULL_FINETUNING) & data["rate"].notna()].groupby("method_key", sort=True):
        line = line.sort_values("rate")
        ax.errorbar(line["rate"], line["avg"], yerr=line["avg_std"].fillna(0.0), marker="o", capsize=3,
                    label=display_name(key))
    markers = ["s", "D", "^", "v", "P", "X", "*", "<", ">", "h"]
    points = data[data["natural_budget"]].sort_values("new_params_pct")
    for i, (_, row) in enumerate(points.iterrows()):
        ax.errorbar([row["new_params_pct"]], [row["avg"]], yerr=[0.0 if row["avg_std"] != row["avg_std"] else row["avg_std"]],
                    marker=markers[i % len(markers)], linestyle="none", capsize=3, color="0.35",
                    markerfacecolor="white", markersize=7,
                    label=f"{row['row']} ({format_percent(row['new_params_pct'])})")
    for _, row in data[data["method"] == FULL_FINETUNING].iterrows():
        ax.axhline(row["avg"], color="black", linestyle="--", linewidth=1.2, label=f"{row['row']} (100%)")
        if row["avg_std"] == row["avg_std"]:
            ax.axhspan(row["avg"] - row["avg_std"], row["avg"] + row["avg_std"], color="black", alpha=0.08)
    ax.set_xscale("log")
    ticks = sorted(set(rates) | ({0.1, 1.0, 10.0} if not points.empty else set()))
    low = min([*rates, *points["new_params_pct"]])
    high = max([*rates, *points["new_params_pct"]])
    ticks = [t for t in ticks if low / 1.5 <= t <= high * 1.5]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{rate_label(r)}%" for r in ticks])
    ax.minorticks_off()
    ax.set_xlabel("% of pretrained parameters changed (log scale): diff pruning's target rate,\n"
                  "other methods' new parameters per task (open markers)")
    ax.set_ylabel("average dev score (%)")
    ax.set_title("Average score vs. sparsity rate")
    # Outside the axes: the lines and the reference band stay readable.
    ax.legend(title="method", fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    caption = ("Figure 1 (left): dev score averaged over " + ", ".join(map(column_title, common))
               + " at each target rate; open markers: the other methods at their natural budget; "
               "error bars: std over seeds of per-seed averages (when several seeds).")
    return Figure("figure1_left_average_vs_rate", "Figure 1 (left): average score vs. sparsity rate",
                  caption, fig, data, notes)


# ----------------------------------------------------------------------------- Figure 1 right

def zero_groups_data(summary: pd.DataFrame) -> pd.DataFrame:
    """Groups left entirely zero per rate, task and diff pruning variant (mean / std / n over
    seeds), from prune-phase diff pruning runs."""
    runs = final_runs(summary)
    runs = runs.assign(variant=diff_pruning_variant(runs))
    runs = runs[runs["variant"].notna() & (runs["phase"] == "prune")]
    if runs.empty:
        raise Skipped("no prune-phase diff pruning runs (method diff_pruning)")
    require_columns(runs, ["groups_zero", "groups_total"], "summary (Figure 1 right: groups left zero)")
    for column in ("groups_zero", "groups_total"):
        runs[column] = pd.to_numeric(runs[column], errors="coerce")
        if runs[column].isna().all():
            raise AnalysisError(f"summary column {column} is empty for every diff pruning run "
                                "(neither metrics.json nor stats.json gave it)")
    runs = runs.dropna(subset=["groups_zero"])
    grouped = runs.groupby(["rate", "task", "method_key", "variant"], sort=True)
    data = grouped.agg(groups_zero=("groups_zero", "mean"), groups_zero_std=("groups_zero", "std"),
                       groups_zero_n=("groups_zero", "size"), groups_total=("groups_total", "max")).reset_index()
    data["label"] = [f"{v}: {display_name(k)}" for v, k in zip(data["variant"], data["method_key"])]
    return data


def figure1_zero_groups(summary: pd.DataFrame) -> Figure:
    """Groups left entirely zero, structured vs. unstructured diff pruning, one panel per rate."""
    data = zero_groups_data(summary)
    _style()
    rates = sorted(data["rate"].unique())
    tasks = [t for t in _task_order(data["task"])]
    labels = sorted(data["label"].unique(), key=lambda l: (not l.startswith("structured"), l))
    fig, axes = plt.subplots(1, len(rates), figsize=(max(4.5, 0.9 * len(tasks) + 2) * len(rates), 4.0),
                             squeeze=False, sharey=True)
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    width = 0.8 / len(labels)
    for ax, rate in zip(axes[0], rates):
        at_rate = data[data["rate"] == rate]
        for position, label in enumerate(labels):
            bars = at_rate[at_rate["label"] == label].set_index("task").reindex(tasks)
            x = np.arange(len(tasks)) + (position - (len(labels) - 1) / 2) * width
            ax.bar(x, bars["groups_zero"], width, yerr=bars["groups_zero_std"].fillna(0.0), capsize=2,
                   color=palette[label], label=label)
        ax.set_xticks(np.arange(len(tasks)))
        ax.set_xticklabels([_task_title(t) for t in tasks])
        totals = at_rate["groups_total"].dropna().unique()
        total = (f"{int(totals[0])}" if len(totals) == 1
                 else f"{int(totals.min())}-{int(totals.max())}") if len(totals) else "?"
        ax.set_title(f"target rate {rate_label(rate)}% (of {total} groups)")
        ax.set_xlabel("task")
    axes[0][0].set_ylabel("groups left entirely zero (count)")
    axes[0][-1].legend(title="diff pruning variant", fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Groups (weight matrices / bias vectors) with an all-zero diff")
    fig.tight_layout()
    caption = ("Figure 1 (right): number of groups (one per weight matrix or bias vector) whose diff is "
               "entirely zero after projection and fixed-mask finetuning; error bars: std over seeds.")
    return Figure("figure1_right_zero_groups", "Figure 1 (right): groups left entirely zero", caption, fig, data)


# ----------------------------------------------------------------------------- Figures 2 and 3

def _task_order(tasks) -> list[str]:
    known = ("qnli", "sst2", "mnli", "cola", "mrpc", "stsb", "rte", "qqp", "squad")
    present = list(dict.fromkeys(tasks))
    return [t for t in known if t in present] + sorted(t for t in present if t not in known)


def _task_title(task: str) -> str:
    return {"mnli": "MNLI", "squad": "SQuAD"}.get(task, column_title(task))


def structured_layer_shares(summary: pd.DataFrame, layers: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Per run and layer, the share (%) of the run's nonzero diff entries in that layer, for
    structured diff pruning prune-phase runs at the chosen rate (0.5% when present)."""
    runs = summary[(diff_pruning_variant(summary) == "structured") & (summary["phase"] == "prune")]
    if runs.empty:
        raise Skipped("no structured diff pruning prune-phase runs")
    if layers.empty:
        raise Skipped("layers.csv has no rows (no stats.json in the run set)")
    require_columns(layers, ["nonzero"], "layers.csv (Figures 2 and 3)")
    rate = chosen_rate(runs["rate"])
    runs = runs[np.isclose(runs["rate"], rate)]
    joined = layer_counts(layers, runs)
    if joined.empty:
        raise Skipped(f"no per-layer nonzero counts for structured diff pruning at {rate_label(rate)}%")
    totals = joined.groupby("run_dir")["nonzero"].transform("sum")
    joined["share_pct"] = 100.0 * joined["nonzero"] / totals.replace(0, np.nan)
    return joined, rate


def _layer_panels(data: pd.DataFrame, panel: str, panel_titles: dict, order: list[str], title: str):
    """Horizontal bars, one panel per value of ``panel``, embeddings at the top (as in the paper)."""
    _style()
    panels = list(panel_titles)
    ncols = min(len(panels), 5)
    nrows = math.ceil(len(panels) / ncols)
    height = max(3.0, 0.22 * len(order) + 1.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols + 1.0, height * nrows),
                             squeeze=False, sharex=True, sharey=True)
    for ax, value in zip(axes.flat, panels):
        bars = data[data[panel] == value].groupby("layer")["share_pct"].agg(["mean", "std", "size"]).reindex(order)
        y = np.arange(len(order))
        spread = bars["std"].where(bars["size"] > 1)
        ax.barh(y, bars["mean"], xerr=None if spread.isna().all() else spread.fillna(0.0), capsize=2,
                color=sns.color_palette("colorblind")[0])
        ax.set_yticks(y)
        ax.set_yticklabels(order)
        ax.set_title(panel_titles[value])
        ax.set_xlabel("share of nonzero diff (%)")
    # Once: the y axis is shared, and inverting it per panel would undo itself.
    axes.flat[0].invert_yaxis()  # earliest layer (embeddings) on top, as in the paper
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("layer")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _share_table(data: pd.DataFrame, keys) -> pd.DataFrame:
    return (data.groupby(list(keys) + ["layer"])["share_pct"]
            .agg(share_pct="mean", share_pct_std="std", share_pct_n="size").reset_index())


def figure2_layer_share_by_task(summary: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    shares, rate = structured_layer_shares(summary, layers)
    order = ordered_layers(shares)
    tasks = _task_order(shares["task"])
    seeds = shares.groupby("task")["seed"].nunique()
    titles = {t: _task_title(t) + (f" ({seeds[t]} seeds)" if seeds[t] > 1 else "") for t in tasks}
    fig = _layer_panels(shares, "task", titles, order,
                        f"Share of modified parameters per layer, one panel per task\n"
                        f"(structured diff pruning at {rate_label(rate)}%)")
    data = _share_table(shares, ["task", "method_key", "rate"])
    caption = (f"Figure 2: percentage of the nonzero diff entries that fall in each layer (embeddings "
               f"first, head last), structured diff pruning at {rate_label(rate)}% target rate, per task; "
               "error bars: std over seeds when several.")
    return Figure("figure2_layer_share_by_task", "Figure 2: modified parameters per layer, per task",
                  caption, fig, data)


def figure3_layer_share_by_seed(summary: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    shares, rate = structured_layer_shares(summary, layers)
    seeds = shares.groupby("task")["seed"].nunique()
    several = seeds[seeds > 1]
    if several.empty:
        raise Skipped("no task has structured diff pruning runs with several seeds")
    if PREFERRED_SEED_TASK in several.index:
        task = PREFERRED_SEED_TASK
    else:  # the task with most seeds; ties broken by the paper's task order
        order = _task_order(several.index)
        task = max(order, key=lambda t: (several[t], -order.index(t)))
    shares = shares[shares["task"] == task]
    order = ordered_layers(shares)
    titles = {s: f"seed {s}" for s in sorted(shares["seed"].unique())}
    fig = _layer_panels(shares, "seed", titles, order,
                        f"{_task_title(task)}: share of modified parameters per layer, one panel per seed\n"
                        f"(structured diff pruning at {rate_label(rate)}%)")
    data = _share_table(shares, ["task", "method_key", "rate", "seed"])
    caption = (f"Figure 3: the per-layer share of nonzero diff entries for each {_task_title(task)} seed, "
               f"structured diff pruning at {rate_label(rate)}%.")
    return Figure("figure3_layer_share_by_seed", f"Figure 3: per-layer profile across {_task_title(task)} seeds",
                  caption, fig, data)


# ----------------------------------------------------------------------------- weight distance

def figure_weight_distance(summary: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    """Per layer, ||θ_ft − θ_0|| / ||θ_0|| and the angle between finetuned and pretrained
    weights of full finetuning runs (Radiya-Dixit & Wang: finetuned models stay close to the
    pretrained one, by how much varies by layer)."""
    if layers.empty or not {"relative_l2", "angle_deg"} & set(layers.columns):
        raise Skipped("layers.csv has no relative_l2 / angle_deg (no per_layer_distance in stats.json)")
    full_runs = summary.loc[is_full_finetuning(summary), ["run_dir", "task", "seed"]]
    metrics = [m for m in ("relative_l2", "angle_deg") if m in layers.columns]
    joined = layers[["run_dir", "layer"] + (["layer_index"] if "layer_index" in layers.columns else []) + metrics] \
        .merge(full_runs, on="run_dir")
    for metric in metrics:
        joined[metric] = pd.to_numeric(joined[metric], errors="coerce")
    joined = joined.dropna(subset=metrics, how="all")
    if joined.empty:
        raise Skipped("no full finetuning run has per-layer distances")
    order = ordered_layers(joined)
    tasks = _task_order(joined["task"])
    data = (joined.groupby(["task", "layer"])[metrics].agg(["mean", "std", "size"]))
    data.columns = [f"{m}{'' if s == 'mean' else '_' + ('n' if s == 'size' else s)}" for m, s in data.columns]
    data = data.reset_index()

    _style()
    axis_labels = {"relative_l2": r"$\|\theta_{ft} - \theta_0\| \,/\, \|\theta_0\|$ (ratio)",
                   "angle_deg": r"angle($\theta_{ft}$, $\theta_0$) (degrees)"}
    titles = {"relative_l2": "relative L2 distance to the pretrained weights",
              "angle_deg": "angle to the pretrained weights"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.0, 0.32 * len(order) + 2) * len(metrics), 4.2),
                             squeeze=False)
    x = np.arange(len(order))
    for ax, metric in zip(axes[0], metrics):
        for task in tasks:
            line = data[data["task"] == task].set_index("layer").reindex(order)
            errors = line[f"{metric}_std"].where(line[f"{metric}_n"] > 1).fillna(0.0)
            ax.errorbar(x, line[metric], yerr=errors, marker="o", markersize=3, capsize=2, label=_task_title(task))
        ax.set_xticks(x)
        ax.set_xticklabels(order, rotation=60, ha="right")
        ax.set_xlabel("layer (embeddings first, head last)")
        ax.set_ylabel(axis_labels[metric])
        ax.set_title(titles[metric])
    axes[0][-1].legend(title="task", fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("How far full finetuning moves each layer from the pretrained weights")
    fig.tight_layout()
    caption = ("Per-layer distance between fully finetuned and pretrained weights (Radiya-Dixit & Wang): "
               "relative L2 distance and angle, per task; error bars: std over seeds when several.")
    return Figure("figure_weight_distance", "Weight distance of full finetuning per layer", caption, fig, data)


SUMMARY_FIGURES = (figure1_average_vs_rate, figure1_zero_groups)
LAYER_FIGURES = (figure2_layer_share_by_task, figure3_layer_share_by_seed, figure_weight_distance)
FIGURE_NAMES = ("figure1_left_average_vs_rate", "figure1_right_zero_groups", "figure2_layer_share_by_task",
                "figure3_layer_share_by_seed", "figure_weight_distance")
