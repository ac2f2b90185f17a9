"""Tables and figures of the diff pruning paper, from any run set.

``python -m diffprune.analysis collect`` turns a ``runs/`` tree into ``summary.csv`` (one row per run)
and ``layers.csv`` (one row per run and layer); ``tables``, ``figures`` and ``readme`` turn
those two files into the claims table (each of the paper's claims tested on the run set,
``claims``), the paper's tables 1-4, a cost table, figures 1-3, a weight-distance figure and a
README that opens with the claims and shows them all. Nothing here names a method except
through ``runset``'s selection rules (full finetuning, the diff pruning variants, and for the
claims last layer and adapters), so a new baseline shows up as new rows and lines by itself.
"""
from diffprune.analysis.runset import AnalysisError

__all__ = ["AnalysisError"]
