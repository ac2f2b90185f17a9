"""What a finished run records: its ``metrics.json`` (docs/ARCHITECTURE.md) and the result
file of ``evaluate``, built from what the run measured.

Every number goes through ``json_safe`` (tensors as plain numbers, NaN / inf as null), and
each record says what produced it: the resolved config, the seeds, the base model's
fingerprint, the device, precision and thread count, and package versions.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path

from diffprune.layers import is_head
from diffprune.seeding import DATA_SUBSAMPLE_SEED, RunSeeds


def versions() -> dict:
    """Versions of what produced the numbers (read from package metadata: nothing is imported)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "diffprune", "adapters", "peft", "datasets"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package in ("torch", "transformers", "diffprune"):
                found[package] = None
    return found


def json_safe(value):
    """Numbers as plain floats/ints; NaN and inf (e.g. an undefined correlation) as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def scores_of(result) -> dict | None:
    """``{"metrics", "scores"}`` results and plain score mappings alike -> the scores."""
    if result is None:
        return None
    if isinstance(result, dict) and "scores" in result:
        return result["scores"]
    return result


def pretrained_parameter_count(model, head_pattern: str) -> int:
    """Parameters of the pretrained body: every (deduplicated) parameter outside the task head."""
    return int(sum(p.numel() for n, p in model.named_parameters() if not is_head(n, head_pattern)))


def file_bytes(directory: Path, exported: dict) -> int:
    """Bytes on disk of the files a method exported (``{kind: path relative to directory}``)."""
    return int(sum((directory / rel).stat().st_size for rel in (exported or {}).values()))


def diff_count(method, stats: dict | None, name: str) -> int | None:
    """``diffed_params`` / ``nonzeros``: the method's attribute, else its stats.json, else None
    (methods without a diff)."""
    value = getattr(method, name, None)
    if value is None and stats:
        value = stats.get(name)
    return None if value is None else int(value)


@dataclass
class LoadedBase:
    """The pretrained model a run starts from, and what results record of it."""

    model: object
    model_id: str
    head_pattern: str        # exactly the parameters the loader newly initialised, unless the config overrides it
    fingerprint: str         # storage.fingerprint of the body: a diff applies to this base only
    pretrained_params: int   # the body's parameter count, the denominator of new_params_pct

    @classmethod
    def inspect(cls, model, model_id: str, head_pattern_override: str | None) -> LoadedBase:
        from diffprune.models import resolve_head_pattern
        from diffprune.storage import fingerprint

        head_pattern = resolve_head_pattern(model, head_pattern_override, model_id)
        return cls(model=model, model_id=model_id, head_pattern=head_pattern,
                   fingerprint=fingerprint(model, head_pattern),
                   pretrained_params=pretrained_parameter_count(model, head_pattern))


def run_metrics(plan, *, base: LoadedBase, seeds: RunSeeds, method, module, task, data, evaluation: dict,
                before_finetune: dict | None, source_scores: dict | None, stats: dict | None, exported: dict,
                run_dir: Path, outcome, peak_memory: int | None, device_label: str, precision: str,
                num_threads: int, clock) -> dict:
    """metrics.json of a train or prune run (``plan``: its ``run_plan.RunPlan``; ``outcome``:
    the train loop's ``TrainOutcome``; ``run_dir``: where the exported files are; ``clock``:
    the job's ``PhaseClock``, read last so that ``timings.total`` covers building the record)."""
    from diffprune.artifact import ARTIFACT_NAME

    new_params = int(method.new_parameter_count(module))
    pretrained_params = base.pretrained_params
    return json_safe({
        "task": plan.task, "method_key": plan.method_key, "method": plan.method_name,
        "phase": plan.phase, "rate": plan.rate, "seed": plan.seed,
        "seeds": {**seeds.to_dict(), "data_subsample": DATA_SUBSAMPLE_SEED},
        "model_id": base.model_id, "base_fingerprint": base.fingerprint,
        "head_parameters": sorted(n for n, _ in base.model.named_parameters() if is_head(n, base.head_pattern)),
        "method_report": method.report(),
        "metrics": evaluation.get("metrics"), "primary_metric": task.primary_metric,
        "scores": evaluation.get("scores"),
        "before_finetune": before_finetune,
        "source_scores": source_scores,
        "majority_scores": json_safe(scores_of(task.majority_baseline(data))),
        "new_params": new_params,
        "new_params_pct": 100.0 * new_params / pretrained_params if pretrained_params else None,
        "pretrained_params": pretrained_params,
        "diffed_params": diff_count(method, stats, "diffed_params"),
        "nonzeros": diff_count(method, stats, "nonzeros"),
        # The payload's bytes: the artifact.json beside it describes it in the same few hundred
        # bytes for every method, so it is left out of the comparison.
        "bytes_per_task": file_bytes(run_dir, exported),
        "exported": exported,
        "artifact": ARTIFACT_NAME,
        "train_seconds": outcome.train_seconds,
        "seconds_per_step": outcome.train_seconds / outcome.steps if outcome.steps else None,
        "peak_memory_bytes": peak_memory,
        "steps": outcome.steps, "epochs": outcome.epochs,
        "train_examples": data.train_examples, "train_examples_total": data.train_examples_total,
        "dev_examples": data.dev_examples, "dataset_note": data.note,
        "device": device_label, "precision": precision,
        # The thread count changes the numbers on a CPU (reduction order), so it is on record.
        "num_threads": num_threads,
        "data_hash": plan.data_hash,
        "config": plan.resolved_config(), "versions": versions(),
        "timings": clock.as_dict(),
    })


def evaluation_result(plan, *, task, model_id: str, artifact, evaluation: dict, data,
                      device_label: str, precision: str, num_threads: int) -> dict:
    """The result file of ``evaluate`` (``plan``: its ``run_plan.EvaluatePlan``): the scores of a
    stored artifact (``diffprune.artifact.Artifact``) rebuilt on the config's base model, and
    what produced them."""
    from diffprune import datahash, settings

    config = artifact.config
    return json_safe({
        "task": plan.task, "artifact": str(plan.artifact_path), "payload": str(artifact.payload_path),
        "payload_format": config["payload"]["format"], "payload_bytes": artifact.payload_path.stat().st_size,
        "method": config.get("method"), "method_key": config.get("method_key"), "phase": config.get("phase"),
        "rate": config.get("rate"), "seed": config.get("seed"),
        "model_id": model_id, "base_fingerprint": artifact.base.get("fingerprint"),
        "metrics": evaluation.get("metrics"), "primary_metric": task.primary_metric,
        "scores": evaluation.get("scores"), "dev_examples": data.dev_examples,
        "dataset_note": data.note, "device": device_label, "precision": precision,
        "num_threads": num_threads, "data_hash": datahash.task_data_hash(plan.task, plan.data_cfg),
        "config": {"name": plan.cfg["name"], "config_file": plan.config_path, "model_key": plan.cfg["model"],
                   "model": settings.model_spec(plan.cfg), "training": plan.training, "data": plan.data_cfg},
        "versions": versions(),
    })
