"""Run the claims, table and figure builders into a folder (with an ``index.json`` of what was
written and what was skipped, and why), and write ``results/<name>/README.md`` that opens with
the claims table and shows it all."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from diffprune.analysis.output import write_json, write_text
from diffprune.analysis.runset import AnalysisError, load_layers, load_summary
from diffprune.rungraph import rate_label

log = logging.getLogger(__name__)

INDEX = "index.json"


def _run_builders(jobs, out_dir: Path) -> dict:
    """Write every output it can; skipped outputs are listed with their reason, failures with
    their error. The caller turns failures into a non-zero exit."""
    from diffprune.analysis.tables import Skipped

    index = {"written": [], "skipped": [], "errors": []}
    for build, args in jobs:
        name = build.__name__
        try:
            item = build(*args)
        except Skipped as reason:
            log.warning("skipped %s: %s", name, reason)
            index["skipped"].append({"builder": name, "reason": str(reason)})
            continue
        except AnalysisError as error:
            log.error("%s failed: %s", name, error)
            index["errors"].append({"builder": name, "error": str(error)})
            continue
        item.write(out_dir)
        entry = {"name": item.name, "title": item.title, "caption": item.caption, "files": item.files()}
        if getattr(item, "notes", None):
            entry["notes"] = list(item.notes)
        index["written"].append(entry)
        log.info("wrote %s", ", ".join(str(out_dir / f) for f in item.files()))
    write_json(out_dir / INDEX, index)
    return index


def _raise_on_errors(index: dict, what: str) -> None:
    if index["errors"]:
        raise AnalysisError(f"{len(index['errors'])} {what} could not be made: "
                            + "; ".join(f"{e['builder']}: {e['error']}" for e in index["errors"]))


def make_tables(summary_path, layers_path, out_dir) -> dict:
    """The claims table (it reads layers.csv too: claims 7 and 8) and tables 1-5."""
    from diffprune.analysis.claims import claims_table
    from diffprune.analysis.serving_table import SERVING_FILE, table5_serving
    from diffprune.analysis.tables import TABLE_BUILDERS

    summary = load_summary(summary_path)
    layers = load_layers(layers_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(claims_table, (summary, layers))] + [(build, (summary,)) for build in TABLE_BUILDERS]
    # Serving numbers are measured on the run set's diff files (python -m diffprune.serve).
    jobs.append((table5_serving, (Path(summary_path).with_name(SERVING_FILE),)))
    index = _run_builders(jobs, out_dir)
    _raise_on_errors(index, "table(s)")
    return index


def make_figures(summary_path, layers_path, out_dir) -> dict:
    from diffprune.analysis.figures import LAYER_FIGURES, SUMMARY_FIGURES

    summary = load_summary(summary_path)
    layers = load_layers(layers_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(build, (summary,)) for build in SUMMARY_FIGURES] + [(build, (summary, layers)) for build in LAYER_FIGURES]
    index = _run_builders(jobs, out_dir)
    _raise_on_errors(index, "figure(s)")
    return index


# ----------------------------------------------------------------------------- README

def _read_index(folder: Path) -> dict:
    path = folder / INDEX
    if not path.is_file():
        return {"written": [], "skipped": [], "errors": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _config_name(summary: pd.DataFrame, results_dir: Path) -> str:
    if "config.name" in summary.columns and summary["config.name"].notna().any():
        return str(summary["config.name"].dropna().iloc[0])
    return results_dir.name


def data_notes(summary: pd.DataFrame) -> list[str]:
    """Per task: the runner's dataset note (e.g. "SQuAD v1.1 dev, article split") and any
    training subsample (train_examples < train_examples_total)."""
    notes = []
    for task, runs in summary.groupby("task", sort=True):
        for note in sorted({str(n).strip() for n in runs.get("dataset_note", pd.Series(dtype=object)).dropna()} - {""}):
            notes.append(f"{task}: {note}")
        # Only when the runner's own note does not already say so.
        said = any("subsampl" in n.lower() for n in notes if n.startswith(f"{task}: "))
        if not said and {"train_examples", "train_examples_total"} <= set(runs.columns):
            used = pd.to_numeric(runs["train_examples"], errors="coerce")
            total = pd.to_numeric(runs["train_examples_total"], errors="coerce")
            sub = runs[used < total]
            if not sub.empty:
                notes.append(f"{task}: trained on a subsample, {int(used[sub.index].min())}"
                             f"{'' if used[sub.index].nunique() == 1 else '-' + str(int(used[sub.index].max()))}"
                             f" of {int(total[sub.index].max())} training examples")
        if "dev_examples" in runs.columns and runs["dev_examples"].notna().any():
            sizes = sorted({int(n) for n in pd.to_numeric(runs["dev_examples"], errors="coerce").dropna()})
            notes.append(f"{task}: evaluated on {', '.join(map(str, sizes))} dev examples")
    return notes


def _run_set_lines(summary: pd.DataFrame) -> list[str]:
    def values(column):
        return ", ".join(sorted({str(v) for v in summary[column].dropna()})) if column in summary.columns else "n/a"
    rates = sorted(set(pd.to_numeric(summary["rate"], errors="coerce").dropna()))
    return [f"- runs: {len(summary)} ({(summary['phase'] == 'prune').sum()} prune-phase)",
            f"- tasks: {values('task')}",
            f"- method keys: {values('method_key')}",
            f"- target rates (%): {', '.join(rate_label(r) for r in rates) or 'none'}",
            f"- seeds: {values('seed')}",
            f"- model: {values('model_id')}",
            f"- device: {values('device')}"]


def floor_lines(summary: pd.DataFrame) -> list[str]:
    """Every run against its floor, the score of a model that learned nothing, as the runner
    recorded it (``majority_scores``): the majority class of the training labels, a constant
    for a regression task (correlation 0), the sentence sharing most words with the question
    for SQuAD. A run at or below its floor is named: its numbers say nothing about the method."""
    columns = sorted({c[len("majority_scores."):] for c in summary.columns if c.startswith("majority_scores.")})
    rows, at_floor = [], []
    for column in columns:
        score, floor = f"scores.{column}", f"majority_scores.{column}"
        if score not in summary.columns:
            continue
        runs = summary[summary[score].notna() & summary[floor].notna()]
        if runs.empty:
            continue
        scores = pd.to_numeric(runs[score], errors="coerce")
        floors = pd.to_numeric(runs[floor], errors="coerce")
        margin = scores - floors
        lowest = margin.idxmin()
        below = runs[margin <= 0]
        at_floor += [f"- {run}: {column} {scores[i]:.1f} vs floor {floors[i]:.1f}"
                     for i, run in zip(below.index, below["run_dir"])]
        floor_text = f"{floors.min():.1f}" if floors.nunique() == 1 else f"{floors.min():.1f}-{floors.max():.1f}"
        rows.append(f"| {column} | {floor_text} | {len(runs)} | {len(runs) - len(below)} | "
                    f"{runs.loc[lowest, 'run_dir']} ({scores[lowest]:.1f}, {margin[lowest]:+.1f}) |")
    if not rows:
        return ["No run recorded its floor.", ""]
    lines = ["Floor: the score of a model that learned nothing, on the same dev examples: the majority "
             "class of the training labels (classification), a constant (a correlation of 0), or for "
             "SQuAD the context sentence sharing most words with the question.", "",
             "| score | floor | runs | above the floor | closest to it (score, margin) |",
             "| :--- | ---: | ---: | ---: | :--- |", *rows, ""]
    if at_floor:
        return lines + [f"At or below the floor ({len(at_floor)}):", "", *at_floor, ""]
    return lines + ["Every run is above its floor.", ""]


CLAIMS = "claims"


def _claims_section(tables_dir: Path) -> list[str]:
    """The README's first section: the claims table, the question a reader comes with."""
    lines = ["## The paper's claims", ""]
    markdown = tables_dir / f"{CLAIMS}.md"
    if not markdown.is_file():
        return lines + ["No claims table (run `python -m diffprune.analysis tables`).", ""]
    links = " · ".join(f"[{suffix}](tables/{CLAIMS}.{suffix})" for suffix in ("md", "csv"))
    return lines + [markdown.read_text(encoding="utf-8").rstrip(), "", f"Files: {links}", ""]


def write_readme(results_dir) -> Path:
    results_dir = Path(results_dir)
    summary = load_summary(results_dir / "summary.csv")
    name = _config_name(summary, results_dir)
    lines = [f"# diffprune results: `{name}`", "",
             "Generated by `python -m diffprune.analysis readme` from `summary.csv` (one row per run) and "
             "`layers.csv`; do not edit by hand. Scores are dev-set percentages of the configured "
             "model unless a row says `paper`; the paper's numbers are BERT-large.", "",
             *_claims_section(results_dir / "tables"),
             "## Run set", "", *_run_set_lines(summary), ""]
    notes = data_notes(summary)
    lines += ["## Data notes", ""] + ([f"- {n}" for n in notes] or ["- none recorded"]) + [""]
    lines += ["## Every run against its floor", "", *floor_lines(summary)]

    skipped = []
    for folder_name, heading in (("tables", "Tables"), ("figures", "Figures")):
        folder = results_dir / folder_name
        index = _read_index(folder)
        lines += [f"## {heading}", ""]
        if not index["written"]:
            lines += [f"No {folder_name} (run `python -m diffprune.analysis {folder_name}`).", ""]
        for entry in index["written"]:
            if folder_name == "tables" and entry["name"] == CLAIMS:
                continue  # shown first, in its own section
            links = " · ".join(f"[{f.rsplit('.', 1)[1]}]({folder_name}/{f})" for f in entry["files"])
            lines += [f"### {entry['title']}", ""]
            if folder_name == "tables":
                markdown = folder / f"{entry['name']}.md"
                lines += [markdown.read_text(encoding="utf-8").rstrip() if markdown.is_file() else entry["caption"], ""]
            else:
                lines += [f"![{entry['title']}]({folder_name}/{entry['name']}.png)", "", entry["caption"], ""]
                lines += [f"- {n}" for n in entry.get("notes", [])] + ([""] if entry.get("notes") else [])
            lines += [f"Files: {links}", ""]
        skipped += [f"- {folder_name}: `{s['builder']}` skipped: {s['reason']}" for s in index["skipped"]]
        skipped += [f"- {folder_name}: `{e['builder']}` FAILED: {e['error']}" for e in index["errors"]]
    if skipped:
        lines += ["## Not shown", "", *skipped, ""]
    return write_text(results_dir / "README.md", "\n".join(lines))
