"""Table 5 (serving): N tasks on one base, from the run set's ``serving.json``.

``python -m diffprune.serve --config CFG --runs results/<name>/runs --out results/<name>/serving.json``
measures it on the run set's own diff files (every switch checked bit for bit first); this
module only formats what that measurement wrote.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from diffprune.analysis.render import Table
from diffprune.analysis.runset import AnalysisError, display_name

SERVING_FILE = "serving.json"
REQUIRED = ("model_id", "method_key", "rate", "tasks", "per_task", "measured", "extrapolated", "rounds")
TASK_FIELDS = ("nonzeros", "file_bytes", "resident_bytes", "switch_ms_median", "switch_ms_p90", "bit_exact")
TOTAL_FIELDS = ("n_tasks", "bank_resident_bytes", "full_models_resident_bytes", "resident_vs_full_models",
                "bank_disk_bytes", "full_models_disk_bytes", "disk_vs_full_models")


def read_serving(path: Path) -> dict:
    from diffprune.analysis.tables import Skipped

    if not path.is_file():
        raise Skipped(f"no {path.name} beside summary.csv: measure it with `python -m diffprune.serve --config "
                      f"<config> --runs <results>/runs --out <results>/{SERVING_FILE}`")
    try:
        serving = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise AnalysisError(f"{path} is not JSON ({error}); measure it again with python -m diffprune.serve") from None
    missing = [key for key in REQUIRED if key not in serving]
    missing += [f"per_task.{task}.{key}" for task, entry in serving.get("per_task", {}).items()
                for key in TASK_FIELDS if key not in entry]
    missing += [f"{block}.{key}" for block in ("measured", "extrapolated") for key in TOTAL_FIELDS
                if key not in serving.get(block, {})]
    if missing:
        raise AnalysisError(f"{path} lacks {', '.join(missing[:5])}: measure it again with python -m diffprune.serve")
    return serving


def table5_serving(path) -> Table:
    serving = read_serving(Path(path))
    header = ["row", "kept entries", "file (MB)", "resident (MB)", "switch (ms, median / p90)",
              "memory vs N full models", "disk vs N full models"]
    cells, numeric = [], []
    for task in serving["tasks"]:
        entry = serving["per_task"][task]
        cells.append([task, f"{entry['nonzeros']:,}", f"{entry['file_bytes'] / 1e6:.3f}",
                      f"{entry['resident_bytes'] / 1e6:.2f}",
                      f"{entry['switch_ms_median']:.2f} / {entry['switch_ms_p90']:.2f}", "", ""])
        numeric.append({"row": task, **{key: entry[key] for key in TASK_FIELDS}})
    for label, block in (("measured", serving["measured"]), ("extrapolated", serving["extrapolated"])):
        n = block["n_tasks"]
        name = f"N = {n} tasks ({label})"
        cells.append([name, "", f"{block['bank_disk_bytes'] / 1e6:.2f}", f"{block['bank_resident_bytes'] / 1e6:.2f}", "",
                      f"{100 * block['resident_vs_full_models']:.1f}% of {block['full_models_resident_bytes'] / 1e6:.1f} MB",
                      f"{100 * block['disk_vs_full_models']:.1f}% of {block['full_models_disk_bytes'] / 1e6:.1f} MB"])
        numeric.append({"row": name, **{key: block[key] for key in TOTAL_FIELDS}})
    caption = (f"{len(serving['tasks'])} task diffs of {display_name(serving['method_key'], serving['rate'])} "
               f"served from one {serving['model_id']} base (TaskBank).")
    notes = [f"Switch: wall time of one activate() from another task, over {serving['rounds']} round trips "
             f"({serving.get('torch_threads', '?')} CPU thread(s), {serving.get('device', '?')}); every activation was "
             "checked bit for bit against a fresh base with that one diff applied, and the base after deactivate "
             "against its pristine copy, before timing.",
             "Resident: the base's tensors plus, per task, its int64 indices, new and original values and head; "
             "N full models: N copies of the base's tensors. Disk: the base checkpoint plus the N diff files, against "
             "N full checkpoints. Task rows: file and resident bytes of that task; N rows: totals.",
             "Extrapolated: the mean per-task cost of the measured tasks times the paper's 9 GLUE tasks."]
    return Table("table5_serving", "Table 5 (serving): N tasks on one base", caption,
                 pd.DataFrame(cells, columns=header), pd.DataFrame.from_records(numeric), notes)
