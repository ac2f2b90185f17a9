"""GLUE and SQuAD v1.1 tasks: data loading (local directory or the Hub), metrics, evaluation.

    task = get_task("rte")
    data = task.load(tokenizer, {"glue_dir": ...}, max_seq_length=128)
    task.evaluate(model, data)  # {"metrics": {"accuracy": ...}, "scores": {"rte": ...}}
"""
from __future__ import annotations

from .base import EvalSet, FeatureDataset, PaddingCollator, Task, TaskData
from .data import DataUnavailableError
from .glue import GLUE_SPECS, GlueTask
from .squad import SquadTask

TASK_NAMES: tuple[str, ...] = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "squad")


def get_task(name: str) -> Task:
    """The task called ``name`` (one of ``TASK_NAMES``, lower case, no dashes)."""
    if name == "squad":
        return SquadTask()
    if name in GLUE_SPECS:
        return GlueTask(GLUE_SPECS[name])
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")


def task_label_set(task: Task) -> list[str] | None:
    """The classes a task's head predicts, in output order (None for regression and QA); a
    stored diff records them so that evaluating it against another label set is refused."""
    if task.kind != "classification":
        return None
    names = getattr(getattr(task, "spec", None), "label_names", None)
    return [str(name) for name in names] if names else [str(i) for i in range(task.num_labels)]


__all__ = ["TASK_NAMES", "get_task", "task_label_set", "Task", "TaskData", "EvalSet", "FeatureDataset",
           "PaddingCollator", "DataUnavailableError", "GlueTask", "SquadTask"]
