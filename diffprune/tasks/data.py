"""Where task data comes from: a local directory (config or environment) or the Hub.

Resolution order, per task family: ``data_cfg["glue_dir"]`` / ``data_cfg["squad_dir"]``,
else ``$GLUE_DIR`` / ``$SQUAD_DIR``, else ``datasets.load_dataset`` from the Hugging Face
Hub. A configured local directory is never silently replaced by the Hub: a missing file
there is an error naming the path expected.
"""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Any, Mapping

# MNLI carries long parse-tree columns; lift csv's 128 KiB per-field default so that no
# well-formed row is ever rejected for its length.
csv.field_size_limit(2**31 - 1)


class DataUnavailableError(RuntimeError):
    """The task's data could be found neither locally nor on the Hub."""


def local_dir(data_cfg: Mapping[str, Any] | None, key: str, env_var: str) -> Path | None:
    """The configured local data directory (``data_cfg[key]`` wins over ``$env_var``), or None."""
    configured = (data_cfg or {}).get(key) or os.environ.get(env_var)
    if not configured:
        return None
    path = Path(os.path.expanduser(str(configured)))
    if not path.is_dir():
        origin = f"data.{key} in the config" if (data_cfg or {}).get(key) else f"${env_var}"
        raise FileNotFoundError(f"{origin} points to {path}, which is not a directory")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected the file {path}, which does not exist")
    return path


def read_tsv(path: Path) -> list[list[str]]:
    """All rows of a GLUE TSV, header included.

    ``QUOTE_NONE``: SST-2 and MRPC contain unbalanced quote characters that the default
    dialect would treat as opening a multi-line field, silently merging rows.
    ``utf-8-sig`` drops the byte-order mark the MRPC header starts with.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def _hub_load_dataset(path: str, config: str | None = None):
    """The one place the Hub is touched (tests replace it to simulate being offline)."""
    import datasets

    return datasets.load_dataset(path, config) if config else datasets.load_dataset(path)


def load_hub_dataset(path: str, config: str | None, how_to_go_local: str):
    """``datasets.load_dataset(path, config)``, or a DataUnavailableError saying what to set."""
    try:
        return _hub_load_dataset(path, config)
    except Exception as error:  # offline, DNS, missing cache, auth: all mean "use a local copy"
        name = f"{path} ({config})" if config else path
        raise DataUnavailableError(
            f"could not load {name} from the Hugging Face Hub ({type(error).__name__}: {error}). "
            f"No local copy is configured: {how_to_go_local}"
        ) from error


def subsample_indices(total: int, limit: int | None, seed: int) -> list[int] | None:
    """A seeded, sorted sample of ``limit`` indices out of ``total``; None when nothing is cut.

    Sorted so the subset keeps the file order (the training loader shuffles anyway), and
    drawn with ``random.Random(seed)`` so the same seed gives the same subset everywhere.
    """
    if limit is None or limit >= total:
        return None
    if limit < 1:
        raise ValueError(f"a maximum example count must be at least 1, got {limit}")
    return sorted(random.Random(seed).sample(range(total), limit))


def subsample_note(split: str, kept: int, total: int, seed: int) -> str:
    return f"{split} subsampled to {kept} of {total} examples (seed {seed})"
