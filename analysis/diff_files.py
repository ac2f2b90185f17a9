"""Per-run columns read from a run's stored diff file, for Table 5: its bytes against the
information limit (``diffprune.diffsize``), so that the table shows what the files on disk
cost, whichever version wrote them."""
from __future__ import annotations

from pathlib import Path

from diffprune.analysis.runset import AnalysisError

DIFF_FILE_NAME = "diff.safetensors"
PREFIX = "diff_file."
FIELDS = ("file_bytes", "limit_bytes", "file_vs_limit", "position_bytes", "position_limit_bytes",
          "value_bytes", "head_bytes", "values_dtype", "version")


def diff_file_columns(run_dir: Path) -> dict:
    """``diff_file.<field>`` of the run's diff.safetensors; {} for a run without one."""
    from diffprune.diffsize import size_report
    from diffprune.storage import DiffFileError

    path = Path(run_dir) / DIFF_FILE_NAME
    if not path.is_file():
        return {}
    try:
        report = size_report(path, repeats=1)
    except DiffFileError as error:
        raise AnalysisError(f"{path}: {error}") from error
    return {f"{PREFIX}{name}": report[name] for name in FIELDS}
