"""Which runs a config asks for, and which run feeds which (the workflow's DAG).

A *run key* (an entry under ``methods:``) names a method and trains once per task and seed,
unless it reuses another key's train run (non-adaptive diff pruning builds on full
finetuning); a projected key then fans out to one prune run per rate. Everything here reads a
config that ``diffprune.settings.load_config`` has validated. The method registry (and so
torch) is imported on first use, to ask a method class whether it is projected, reuses or
reads a run.
"""
from __future__ import annotations

import os
from pathlib import Path

from diffprune import config_schema
from diffprune.diff_pruning_config import check_rate

# Keys of a methods entry that say which runs exist and how they train, not method options.
ENTRY_KEYS = tuple(k for k in config_schema.schema()["$defs"]["method_entry"]["properties"] if k != "method")


def method_entry(cfg: dict, key: str) -> tuple[str, dict, dict]:
    """(registry name, method options, training overrides) of run key ``key``."""
    if key not in cfg["methods"]:
        raise ValueError(f"unknown method key {key!r}; this config defines: {', '.join(cfg['methods'])}")
    entry = dict(cfg["methods"][key] or {})
    name = entry.pop("method", key)
    training = dict(entry.pop("training", None) or {})
    for which_runs in ENTRY_KEYS:  # which runs exist and their schedules, not method options
        entry.pop(which_runs, None)
    return name, entry, training


def _method_class_of(cfg: dict, key: str):
    from diffprune.registry import method_class  # noqa: PLC0415 (imports torch)

    return method_class(method_entry(cfg, key)[0])


def _registry_name(cfg: dict, key: str) -> str:
    return method_entry(cfg, key)[0]


def is_projected(cfg: dict, key: str) -> bool:
    """Runs of this key fan out per rate (projection + fixed-mask finetuning)."""
    return bool(_method_class_of(cfg, key).projected)


def _provider(cfg: dict, method: str) -> str | None:
    """The key providing ``method``'s runs: the key named like the method, else the first."""
    providers = [k for k in cfg["methods"] if _registry_name(cfg, k) == method]
    if not providers:
        return None
    return method if method in providers else providers[0]


def reused_key(cfg: dict, key: str) -> str | None:
    """The config key whose train run this key reuses instead of training its own, or None."""
    reuses = _method_class_of(cfg, key).reuses
    if not reuses:
        return None
    provider = _provider(cfg, reuses)
    if provider is None:
        raise ValueError(f"methods.{key}: method {_registry_name(cfg, key)!r} reuses the runs of {reuses!r}, "
                         f"but no methods entry has `method: {reuses}`; add one")
    return provider


def needed_key(cfg: dict, key: str) -> str | None:
    """The config key whose train run (same task and seed) this key's train run reads, or None
    (methods with ``needs_run``, e.g. critical-layer finetuning without explicit layers)."""
    name, options, _ = method_entry(cfg, key)
    cls = _method_class_of(cfg, key)
    if not cls.needs_run_for(options):
        return None
    provider = _provider(cfg, cls.needs_run)
    if provider is None:
        raise ValueError(f"methods.{key}: method {name!r} reads the runs of {cls.needs_run!r}, but no methods "
                         f"entry has `method: {cls.needs_run}`; add one (or give `{cls.run_option}`)")
    return provider


def source_key(cfg: dict, key: str) -> str | None:
    """The key whose train run feeds this key's prune runs (None: the key is not projected)."""
    if not is_projected(cfg, key):
        return None
    return reused_key(cfg, key) or key


def trains(cfg: dict, key: str) -> bool:
    """Whether this key has its own train runs (keys that reuse another key's run do not)."""
    return reused_key(cfg, key) is None


def needs_dense_diff(cfg: dict, key: str) -> bool:
    """The train run of ``key`` must write ``dense_diff.safetensors`` (some prune run reads it)."""
    return any(source_key(cfg, other) == key for other in cfg["methods"])


def method_tasks(cfg: dict, key: str) -> list[str]:
    """The tasks key ``key`` runs on: its entry's ``tasks``, else every task of the config."""
    own = (cfg["methods"].get(key) or {}).get("tasks")
    return [t for t in cfg["tasks"] if own is None or t in own]


def seeds_for(cfg: dict, task: str, key: str | None = None) -> list[int]:
    """The seeds of ``task``: the method entry's ``task_seeds``, else the config's
    ``task_seeds``, else ``seeds``."""
    own = ((cfg["methods"].get(key) or {}).get("task_seeds") or {}).get(task) if key is not None else None
    return list(own or cfg["task_seeds"].get(task) or cfg["seeds"])


def rates(cfg: dict) -> list[float]:
    return [check_rate(r) for r in cfg["rates"]]


def rates_for(cfg: dict, key: str, task: str | None = None) -> list[float]:
    """The sparsity rates a projected key runs at (on ``task``): its entry's ``task_rates``
    for that task, else its own ``rates``, else the config's."""
    entry = cfg["methods"].get(key) or {}
    own = ((entry.get("task_rates") or {}).get(task) if task is not None else None) or entry.get("rates")
    return [check_rate(r) for r in own] if own is not None else rates(cfg)


def rate_label(rate: float | str) -> str:
    """A sparsity rate (percent) wherever it is shown: tables, figures, the claims, run
    directories (``rate_folder``) and messages. The number as the config writes it, without a
    trailing ".0": 0.5 -> "0.5", 1.0 -> "1", 0.25 -> "0.25", 1e-05 -> "1e-05"."""
    text = repr(float(rate))  # the shortest text that reads back as the same float
    return text[:-2] if text.endswith(".0") else text


def rate_folder(rate: float | str) -> str:
    """``rate<label>``: a prune run's directory under its method key. Whole-number rates keep
    the ".0" (rate1.0, not rate1) that run directories have always had: without it Snakemake
    and the analysis would not find finished runs, and would train them again."""
    label = rate_label(rate)
    return f"rate{label}.0" if label.isdigit() else f"rate{label}"


def projected_keys(cfg: dict) -> list[str]:
    return [k for k in cfg["methods"] if is_projected(cfg, k)]


def check_provider_runs(cfg: dict, key: str) -> None:
    """A key that reuses or reads another key's train runs must not ask for a (task, seed)
    that the other key does not run."""
    provider = reused_key(cfg, key) or needed_key(cfg, key)
    if provider is None:
        return
    for task in method_tasks(cfg, key):
        if task not in method_tasks(cfg, provider):
            raise ValueError(f"methods.{key} runs on task {task!r}, but the {provider!r} runs it builds on "
                             f"do not: add {task!r} to methods.{provider}.tasks or drop it from methods.{key}.tasks")
        missing = sorted(set(seeds_for(cfg, task, key)) - set(seeds_for(cfg, task, provider)))
        if missing:
            raise ValueError(f"methods.{key} runs task {task!r} with seeds {missing}, which the {provider!r} runs "
                             f"it builds on do not have: give methods.{provider} those seeds too")


# ----------------------------------------------------------------------------- run layout

def relative_run_dir(task: str, key: str, seed: int, rate: float | None = None) -> Path:
    """``<task>/<key>/[rate<R>/]seed<S>``: a run's place under ``results/<name>/runs``."""
    path = Path(task) / key
    if rate is not None:
        path = path / rate_folder(rate)
    return path / f"seed{int(seed)}"


def run_dir(results_root: str | os.PathLike, cfg: dict, task: str, key: str, seed: int,
            rate: float | None = None) -> Path:
    """``<root>/<name>/runs/<task>/<key>/[rate<R>/]seed<S>`` (see docs/ARCHITECTURE.md)."""
    return Path(results_root) / cfg["name"] / "runs" / relative_run_dir(task, key, seed, rate)


def expand_runs(cfg: dict) -> list[dict]:
    """Every run the config asks for, in a form the workflow can turn into targets.

    Each item: {"task", "key", "seed", "rate" (None for train runs), "phase",
    "source_key" (prune runs: whose train run feeds it)}. Keys that reuse another key's
    train run contribute only prune runs.
    """
    runs = []
    for task in cfg["tasks"]:
        for key in cfg["methods"]:
            if task not in method_tasks(cfg, key):
                continue
            for seed in seeds_for(cfg, task, key):
                if trains(cfg, key):
                    runs.append({"task": task, "key": key, "seed": seed, "rate": None, "phase": "train", "source_key": None})
                src = source_key(cfg, key)
                if src is not None:
                    for rate in rates_for(cfg, key, task):
                        runs.append({"task": task, "key": key, "seed": seed, "rate": rate, "phase": "prune", "source_key": src})
    return runs
