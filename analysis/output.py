"""Atomic writers for the analysis outputs, through ``diffprune.atomic``: every output is
written to a temporary file in its own directory and renamed into place (a reader, or
Snakemake, never sees half a file), with the permissions the umask gives a new file."""
from __future__ import annotations

import json
from pathlib import Path

from diffprune.atomic import write_text as _write_text
from diffprune.atomic import write_with


def write_text(path, text: str) -> Path:
    _write_text(path, text)
    return Path(path)


def write_json(path, value) -> Path:
    return write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_csv(path, frame, index: bool = False) -> Path:
    write_with(path, lambda tmp: frame.to_csv(tmp, index=index))
    return Path(path)


def save_figure(figure, path) -> Path:
    """Save a matplotlib figure; the format comes from the target's suffix, not the temp name."""
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    write_with(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=200, bbox_inches="tight"))
    return path
