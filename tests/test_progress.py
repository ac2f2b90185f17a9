"""diffprune/progress.py: log lines and the progress bar, readable in a log file."""
from __future__ import annotations

import io

from diffprune.progress import NO_PROGRESS_ENV, _LineWriter, log, progress_bar


def test_log_lines_go_to_stderr_with_a_prefix(capsys):
    log("evaluating")
    captured = capsys.readouterr()
    assert captured.err == "[diffprune] evaluating\n" and captured.out == ""


def test_carriage_return_redraws_become_whole_lines():
    stream = io.StringIO()
    writer = _LineWriter(stream)
    for redraw in ("\r  1/10 steps", "\r  2/10 steps", "\r", "\n"):
        writer.write(redraw)
    writer.flush()
    assert stream.getvalue() == "  1/10 steps\n  2/10 steps\n"


def test_the_bar_writes_lines_in_a_log_file_and_can_be_turned_off(monkeypatch, capsys):
    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)
    bar = progress_bar(total=4, initial=1, description="train rte/ff/seed0")
    bar.update(3)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines and all("\r" not in line for line in lines)
    assert "train rte/ff/seed0" in lines[-1] and "4/4" in lines[-1]

    monkeypatch.setenv(NO_PROGRESS_ENV, "1")
    bar = progress_bar(total=4, initial=0, description="quiet")
    bar.update(4)
    bar.close()
    assert capsys.readouterr().err == ""
