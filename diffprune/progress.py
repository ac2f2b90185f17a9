"""What a run prints while it works: one-line log messages and the training progress bar.

Everything goes to stderr (stdout stays free for what a verb prints as its result).
``DIFFPRUNE_NO_PROGRESS=1`` turns the progress bar off.
"""
from __future__ import annotations

import os
import sys

NO_PROGRESS_ENV = "DIFFPRUNE_NO_PROGRESS"


def log(message: str) -> None:
    print(f"[diffprune] {message}", file=sys.stderr, flush=True)


class _LineWriter:
    """A file for tqdm that turns its carriage-return redraws into whole lines.

    In a log file (not a terminal) tqdm's ``\\r`` redraws pile up into one unreadable line;
    this writes each redraw as its own line instead (tqdm is throttled by ``mininterval``).
    """

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, initial: int, description: str):
    """A tqdm bar over optimizer steps: redrawn in place on a terminal, as throttled whole
    lines (every 30 s) in a log file."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=description, unit="step", dynamic_ncols=interactive,
                file=sys.stderr if interactive else _LineWriter(sys.stderr),
                mininterval=0.5 if interactive else 30.0, ascii=not interactive, ncols=None if interactive else 100,
                disable=os.environ.get(NO_PROGRESS_ENV) == "1")
