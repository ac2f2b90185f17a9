"""Atomic writers: every output is written to a temporary file in its own directory and
renamed into place, so a reader (or Snakemake) never sees half a file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _temporary_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target: os.replace is then a rename on one file system.
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    return Path(name)


def _replace_or_clean(tmp: Path, path: Path, write) -> Path:
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    path = Path(path)
    return _replace_or_clean(_temporary_sibling(path), path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path, value) -> Path:
    return write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_csv(path, frame, index: bool = False) -> Path:
    path = Path(path)
    return _replace_or_clean(_temporary_sibling(path), path, lambda tmp: frame.to_csv(tmp, index=index))


def save_figure(figure, path) -> Path:
    """Save a matplotlib figure; the format comes from the target's suffix, not the temp name."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    return _replace_or_clean(
        _temporary_sibling(path), path,
        lambda tmp: figure.savefig(tmp, format=fmt, dpi=200, bbox_inches="tight"),
    )
