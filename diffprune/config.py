"""The former name of ``diffprune.diff_pruning_config``, kept only while ``diffprune/runner.py``
still imports ``check_rate`` from here; delete this file once it imports the new module."""
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN, DiffPruningConfig, check_rate

__all__ = ["DEFAULT_HEAD_PATTERN", "DiffPruningConfig", "check_rate"]
