"""Tables and figures of the diff pruning paper, from any run set.

``python -m analysis collect`` turns a ``runs/`` tree into ``summary.csv`` (one row per run)
and ``layers.csv`` (one row per run and layer); ``tables``, ``figures`` and ``readme`` turn
those two files into the paper's tables 1-4, a cost table, figures 1-3, a weight-distance
figure and a README that shows them all. Nothing here names a method except full
finetuning and the structured / unstructured diff pruning selection (see ``runset``), so a
new baseline shows up as new rows and lines by itself.
"""
from analysis.runset import AnalysisError

__all__ = ["AnalysisError"]
