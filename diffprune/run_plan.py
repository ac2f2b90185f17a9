"""Planning a run: everything a ``train``, ``prune`` or ``evaluate`` request is checked for
before any model loads.

A plan holds the config read and validated, the task, method key and options, rate, seed,
the resolved training settings, the data folders (and their content hash) and the source
run; a mistake (unknown task or key, a rate outside (0, 100], a source run of another task
or seed, an output directory that is a link or holds someone's files, a method that cannot
adapt the model) is reported here in one line. ``runner.execute`` / ``execute_evaluate``
then carry the plan out.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from diffprune import datahash, rungraph, settings
from diffprune.handover import DENSE_DIFF_NAME
from diffprune.seeding import RunSeeds, derive_seeds


@dataclass
class RunPlan:
    """One train or prune run, validated; nothing heavy has been loaded yet."""

    phase: str                       # "train" | "prune"
    cfg: dict
    config_path: str
    task: str
    method_key: str
    method_name: str
    method_options: dict
    seed: int
    out_dir: Path
    training: dict
    data_cfg: dict
    overrides: dict = field(default_factory=dict)
    rate: float | None = None
    source_dir: Path | None = None
    write_dense_diff: bool = False
    data_hash: str | None = None     # content hash of the task's data files (diffprune.datahash)

    @property
    def tmp_dir(self) -> Path:
        return self.out_dir.with_name(self.out_dir.name + ".tmp")

    def owner(self) -> dict:
        """What the run writes into the temporary directory it creates (atomic.OWNER_FILE)."""
        return {"phase": self.phase, "task": self.task, "method_key": self.method_key, "seed": self.seed,
                "rate": self.rate}

    @cached_property
    def seeds(self) -> RunSeeds:
        """The run's random streams, each derived from ``seed`` (once per plan)."""
        return derive_seeds(self.seed)

    def resolved_config(self) -> dict:
        """What metrics.json records as ``config``: everything this run's numbers depend on."""
        return {
            "name": self.cfg["name"],
            "config_file": self.config_path,
            "model_key": self.cfg["model"],
            "model": settings.model_spec(self.cfg),
            "method": {"key": self.method_key, "name": self.method_name, "options": self.method_options},
            "training": self.training,
            "overrides": self.overrides,
            "data": self.data_cfg,
            "data_hash": self.data_hash,
            "head_pattern": self.cfg["head_pattern"],
            "rate": self.rate,
            "source_dir": str(self.source_dir) if self.source_dir else None,
        }


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def _check_out_dir(out_dir: Path) -> None:
    for path in (out_dir, out_dir.with_name(out_dir.name + ".tmp")):
        if path.is_symlink():
            raise ValueError(f"--out {out_dir}: {path} is a symbolic link; a run never writes or clears through a "
                             "link: move it away")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and not (out_dir / "metrics.json").is_file() and any(out_dir.iterdir()):
        raise ValueError(f"--out {out_dir} exists, is not empty and holds no metrics.json "
                         "(not a finished run): move it away or delete it")


def _finished_run(run_dir: Path, flag: str) -> dict:
    """metrics.json of a finished run directory (clear error otherwise)."""
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise FileNotFoundError(f"{flag} {run_dir}: no metrics.json there (not a finished run)")
    return json.loads(metrics.read_text())


def plan_train(config_path, task: str, method_key: str, seed: int, out_dir,
               overrides: dict | None = None, needed_dir=None) -> RunPlan:
    """``needed_dir``: the finished run a ``needs_run`` method reads (``train --from``)."""
    cfg = settings.load_config(config_path)
    settings.check_task(task)
    seed = _check_seed(seed)
    name, options, _ = rungraph.method_entry(cfg, method_key)
    reused = rungraph.reused_key(cfg, method_key)
    if reused is not None:
        raise ValueError(f"method key {method_key!r} ({name}) has no train phase of its own: it reuses the "
                         f"train runs of {reused!r}; train {reused!r} and `prune --from` its run directory")
    needed = rungraph.needed_key(cfg, method_key)
    if needed is None and needed_dir is not None:
        raise ValueError(f"--from is only for methods that read another run; {method_key!r} ({name}) does not")
    if needed is not None:
        if needed_dir is None:
            raise ValueError(f"method key {method_key!r} ({name}) reads the finished {needed!r} run of the same "
                             f"task and seed: pass its run directory with --from")
        source = _finished_run(Path(needed_dir), "--from")
        if source.get("task") != task or source.get("seed") != seed or source.get("method_key") != needed:
            raise ValueError(f"--from {needed_dir} is the {source.get('method_key')!r} run of task "
                             f"{source.get('task')!r}, seed {source.get('seed')!r}; {method_key!r} needs the "
                             f"{needed!r} run of task {task!r}, seed {seed}")
        from diffprune.registry import method_class

        options = {**options, method_class(name).run_option: str(Path(needed_dir))}
    from diffprune.registry import build_method

    method = build_method(name, **options)  # unknown / invalid options fail here, before any model loads
    check_method_applies(cfg, task, method_key, method)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    data_cfg = settings.data_config(cfg, task)
    return RunPlan(
        phase="train", cfg=cfg, config_path=str(config_path), task=task, method_key=method_key,
        method_name=name, method_options=options, seed=seed, out_dir=out_dir,
        training=settings.resolve_training(cfg, task, method_key, "train", overrides),
        data_cfg=data_cfg, overrides=dict(overrides or {}),
        write_dense_diff=rungraph.needs_dense_diff(cfg, method_key),
        data_hash=datahash.task_data_hash(task, data_cfg),
    )


def check_method_applies(cfg: dict, task: str, method_key: str, method) -> None:
    """Refuse, before a job starts, a method that cannot adapt the configured model (or a model
    with no task head): inspected on its weightless skeleton, the error names method, model
    and what to do instead."""
    from diffprune.models import model_skeleton, resolve_head_pattern

    skeleton, model_id = model_skeleton(settings.model_spec(cfg), task)
    head_pattern = resolve_head_pattern(skeleton, cfg["head_pattern"], model_id)
    try:
        method.check_model(skeleton, head_pattern)
    except ValueError as error:
        raise ValueError(f"method key {method_key!r} (method {method.name}) cannot run on model {model_id} "
                         f"({type(skeleton).__name__}): {error}") from None


def plan_prune(config_path, task: str, method_key: str, seed: int, rate: float, source_dir, out_dir,
               overrides: dict | None = None) -> RunPlan:
    from diffprune.diff_pruning_config import check_rate

    rate = check_rate(rate)
    cfg = settings.load_config(config_path)
    settings.check_task(task)
    seed = _check_seed(seed)
    name, options, _ = rungraph.method_entry(cfg, method_key)
    expected_source = rungraph.source_key(cfg, method_key)
    if expected_source is None:
        raise ValueError(f"method key {method_key!r} ({name}) is not projected: it has no prune phase")
    source_dir = Path(source_dir)
    source = _finished_run(source_dir, "--from")
    if not (source_dir / DENSE_DIFF_NAME).is_file():
        raise FileNotFoundError(f"--from {source_dir}: no {DENSE_DIFF_NAME} there; the train run of "
                                f"{expected_source!r} writes it when a projected method uses it")
    if source.get("task") != task:
        raise ValueError(f"--from {source_dir} is a {source.get('task')!r} run, not {task!r}")
    if source.get("method_key") != expected_source:
        raise ValueError(f"--from {source_dir} is a run of {source.get('method_key')!r}; the prune runs of "
                         f"{method_key!r} take the runs of {expected_source!r}")
    if source.get("seed") != seed:
        raise ValueError(f"--from {source_dir} is the seed-{source.get('seed')} run; a prune run of seed {seed} "
                         f"starts from the seed-{seed} run of {expected_source!r} (or pass --seed "
                         f"{source.get('seed')})")
    from diffprune.registry import build_method

    # Unknown / invalid options still fail here. Whether the method applies to the model was
    # checked when its source run was planned (same config and model), so the model skeleton
    # is not built again for every rate.
    build_method(name, **options)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    data_cfg = settings.data_config(cfg, task)
    return RunPlan(
        phase="prune", cfg=cfg, config_path=str(config_path), task=task, method_key=method_key,
        method_name=name, method_options=options, seed=seed, out_dir=out_dir,
        training=settings.resolve_training(cfg, task, method_key, "prune", overrides),
        data_cfg=data_cfg, overrides=dict(overrides or {}),
        rate=rate, source_dir=source_dir, data_hash=datahash.task_data_hash(task, data_cfg),
    )


@dataclass
class EvaluatePlan:
    """One ``evaluate`` request: a stored artifact, rebuilt on the config's base model."""

    cfg: dict
    config_path: str
    task: str
    artifact_path: Path              # as given: a run directory, its artifact.json, or a payload file
    out_path: Path
    training: dict
    data_cfg: dict
    model_key: str | None


def _refuse_existing_result(out_path: Path) -> None:
    if os.path.lexists(out_path):
        raise ValueError(f"--out {out_path} exists: evaluate never reuses or overwrites a result file "
                         "(its scores could be another artifact's); delete it or choose another --out")


def plan_evaluate(artifact_path, config_path, task: str, out_path, model_key: str | None = None,
                  overrides: dict | None = None) -> EvaluatePlan:
    out_path = Path(out_path)
    _refuse_existing_result(out_path)
    cfg = settings.load_config(config_path)
    settings.check_task(task)
    if model_key is not None:
        settings.model_spec(cfg, model_key)
        cfg["model"] = model_key
    artifact_path = Path(artifact_path)
    if not artifact_path.exists():
        raise FileNotFoundError(f"--artifact {artifact_path}: no such file or directory")
    from diffprune.artifact import check_task, read_artifact
    from diffprune.tasks import get_task, task_label_set

    # A lone dense diff, a foreign or broken file, or another task's artifact is refused
    # before any model loads.
    check_task(read_artifact(artifact_path), task, task_label_set(get_task(task)))
    return EvaluatePlan(cfg=cfg, config_path=str(config_path), task=task, artifact_path=artifact_path,
                        out_path=out_path, training=settings.resolve_training(cfg, task, None, "train", overrides),
                        data_cfg=settings.data_config(cfg, task), model_key=model_key)
