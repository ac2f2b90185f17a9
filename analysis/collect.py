"""``runs/`` tree -> ``summary.csv`` (one row per run) and ``layers.csv`` (one row per run
and layer).

summary.csv: ``run_dir`` (relative to the runs directory, so the file stays valid when the
results folder moves) and every field of the run's ``metrics.json``, nested dicts
flattened to ``a.b`` columns (``scores.rte``, ``before_finetune.scores.rte``,
``config.method_options.structured``), lists stored as JSON strings. ``groups_total`` /
``groups_zero`` come from metrics.json, or from stats.json when metrics.json lacks them.

layers.csv: run_dir, task, method_key, method, phase, rate, seed, layer, layer_index
(position in stats.json's ``layer_order``), numel, nonzero, and the per-layer distance
fields (``relative_l2``, ``angle_deg``) of full-finetuning runs' ``per_layer_distance``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from diffprune.analysis.diff_files import diff_file_columns
from diffprune.analysis.output import write_csv
from diffprune.analysis.runset import AnalysisError

IDENTITY_FIELDS = ("task", "method_key", "method", "phase", "rate", "seed")
REQUIRED_METRICS_FIELDS = ("task", "method_key", "method", "phase", "seed")
LAYER_COLUMNS = ("run_dir",) + IDENTITY_FIELDS + ("layer", "layer_index", "numel", "nonzero",
                                                   "relative_l2", "angle_deg")
GROUP_FIELDS = ("groups_total", "groups_zero")


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b": leaf}; lists and tuples -> JSON strings (one CSV cell)."""
    flat: dict = {}
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(item, dict) and item:
                flat.update(flatten(item, name))
            elif isinstance(item, dict):
                flat[name] = None  # an empty block (e.g. before_finetune of a train run)
            else:
                flat[name] = json.dumps(item) if isinstance(item, (list, tuple)) else item
        return flat
    return {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else value}


def _is_unfinished(name: str) -> bool:
    # The runner renames a temporary sibling into place when a run is done; hidden and
    # "*.tmp*" directories are runs in progress (or abandoned), never results.
    return name.startswith(".") or ".tmp" in name


def find_run_dirs(runs_root: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(runs_root):
        subdirs[:] = sorted(d for d in subdirs if not _is_unfinished(d))
        if "metrics.json" in files:
            found.append(Path(directory))
    return sorted(found)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as error:
        raise AnalysisError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise AnalysisError(f"{path} does not hold a JSON object")
    return value


def _layer_rows(stats: dict, identity: dict) -> list[dict]:
    per_layer = stats.get("per_layer") or {}
    distance = stats.get("per_layer_distance") or {}
    order = list(stats.get("layer_order") or [])
    labels = order + [label for label in list(per_layer) + list(distance) if label not in order]
    rows = []
    for label in dict.fromkeys(labels):
        if label not in per_layer and label not in distance:
            continue
        row = {**identity, "layer": label, "layer_index": order.index(label) if label in order else None}
        row.update({k: v for k, v in (per_layer.get(label) or {}).items()})
        row.update({k: v for k, v in (distance.get(label) or {}).items()})
        rows.append(row)
    return rows


# The data folders a run read (metrics.json ``config.data``): absolute paths of the machine
# that ran it. A summary is shared (the reference run set is committed), so they are written
# relative to the working directory (the repository root) when inside it, and as
# ``<external>/<folder name>`` otherwise.
DATA_LOCATION_PREFIX = "config.data."
EXTERNAL_PREFIX = "<external>"


def portable_path(value):
    """``value`` if it is not an absolute path; else relative to the working directory, or
    ``<external>/<folder name>`` outside it."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = Path(value)
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return f"{EXTERNAL_PREFIX}/{path.name}"


def select_runs(runs_root: Path, only) -> list[Path]:
    """The run directories to collect: exactly ``only`` (the runs the config expands to,
    each of which must be finished) when given, else every finished run under ``runs_root``.

    Finished runs under ``runs_root`` that ``only`` leaves out (a method, task, rate or seed
    dropped from the config since they ran) are named in the log and left out of the tables.
    """
    found = find_run_dirs(runs_root)
    if only is None:
        return found
    chosen = []
    for entry in only:
        path = Path(entry)
        path = path if path.is_absolute() or path.parts[:len(runs_root.parts)] == runs_root.parts else runs_root / path
        if not (path / "metrics.json").is_file():
            raise AnalysisError(f"run {path} holds no metrics.json: it is not finished (run the workflow first)")
        try:
            path.relative_to(runs_root)
        except ValueError:
            raise AnalysisError(f"run {path} is not under the runs directory {runs_root}") from None
        chosen.append(path)
    ignored = sorted(set(found) - set(chosen))
    if ignored:
        shown = ", ".join(p.relative_to(runs_root).as_posix() for p in ignored[:20])
        more = f" and {len(ignored) - 20} more" if len(ignored) > 20 else ""
        logging.getLogger(__name__).warning(
            "ignored %d finished run(s) under %s that the config does not ask for (left out of the tables): %s%s",
            len(ignored), runs_root, shown, more)
    return sorted(dict.fromkeys(chosen))


def collect(runs_root, only=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``only``: the run directories the config asks for (see ``select_runs``); None: every
    finished run under ``runs_root``."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise AnalysisError(f"runs directory {runs_root} does not exist: the run set is empty")
    run_dirs = select_runs(runs_root, only)
    if not run_dirs:
        raise AnalysisError(f"no metrics.json under {runs_root}: the run set is empty")

    summary_rows, layer_rows = [], []
    for run_dir in run_dirs:
        metrics = _read_json(run_dir / "metrics.json")
        missing = [f for f in REQUIRED_METRICS_FIELDS if f not in metrics]
        if missing:
            raise AnalysisError(f"{run_dir / 'metrics.json'} lacks field(s) {', '.join(missing)}")
        relative = run_dir.relative_to(runs_root).as_posix()
        row = {"run_dir": relative, **{k: portable_path(v) if k.startswith(DATA_LOCATION_PREFIX) else v
                                       for k, v in flatten(metrics).items()}}
        row.update(diff_file_columns(run_dir))  # Table 5: the stored diff against its information limit
        stats_path = run_dir / "stats.json"
        if stats_path.is_file():
            stats = _read_json(stats_path)
            for field in GROUP_FIELDS:
                if row.get(field) is None and stats.get(field) is not None:
                    row[field] = stats[field]
            identity = {"run_dir": relative, **{f: metrics.get(f) for f in IDENTITY_FIELDS}}
            layer_rows.extend(_layer_rows(stats, identity))
        summary_rows.append(row)

    summary = pd.DataFrame.from_records(summary_rows)
    leading = ["run_dir", *IDENTITY_FIELDS]
    summary = summary[[c for c in leading if c in summary.columns]
                      + [c for c in summary.columns if c not in leading]]
    layers = pd.DataFrame.from_records(layer_rows)
    extra = [c for c in layers.columns if c not in LAYER_COLUMNS]
    layers = layers.reindex(columns=list(LAYER_COLUMNS) + extra)
    return summary, layers


def write_collection(runs_root, summary_out, layers_out=None, only=None) -> tuple[Path, Path]:
    summary, layers = collect(runs_root, only)
    summary_out = Path(summary_out)
    layers_out = Path(layers_out) if layers_out else summary_out.with_name("layers.csv")
    write_csv(summary_out, summary)
    write_csv(layers_out, layers)
    return summary_out, layers_out
