"""Reading, checking and resolving a run configuration (``config/*.yaml``).

The workflow (the Snakefile expands its DAG from these functions) and the runner read the
same file through this module, so "which runs exist" and "what one run trains with" can
never disagree. Importing this module must stay cheap: the Snakefile imports it on every
invocation, so nothing here imports torch at module level (the method registry, which
does, is imported inside the functions that need a method's class).

Training settings resolve as (later wins)::

    built-in defaults (the paper's, section 4.3)
      < cfg.training < cfg.models[model].training < cfg.task_training[task]
      < cfg.methods[key].training < cfg.methods[key].task_training[task]
      < command-line overrides (``--set``)

``methods[key].task_training`` exists because a schedule that suits one method on one task
may not suit another (e.g. adapters need more epochs than full finetuning on CoLA); only the
runs of that key on that task change, so the workflow reruns only those.

In the ``prune`` phase (fixed-mask finetuning after projection) ``learning_rate`` and
``epochs`` are taken from ``fixed_mask_learning_rate`` / ``fixed_mask_epochs``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from diffprune.config import check_rate

# The task names, as diffprune.tasks.TASK_NAMES has them. Repeated here rather than imported
# because importing the tasks package pulls in torch, scikit-learn and scipy (seconds), and
# the Snakefile validates the config on every invocation; tests/test_settings.py checks that
# the two lists agree.
TASK_NAMES = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "squad")
FALLBACK_TASK_NAMES = TASK_NAMES  # the name the workflow code may already use

FIVE_FIXED_MASK_EPOCH_TASKS = ("mrpc", "stsb", "rte")

# Built-in training defaults: the paper's settings (section 4.3) plus the runner's knobs.
#
# precision: "auto" = fp32 on CPU; on CUDA bf16 autocast where the GPU supports bf16
# (Ampere and later: no loss scaling needed, same exponent range as fp32), else fp16
# autocast with a GradScaler. "fp32", "bf16" and "fp16" (CUDA only) force one.
# batch_size is the examples per forward pass; with gradient_accumulation_steps = k one
# optimizer step sees k * batch_size examples.
# max_steps (null = no cap) stops after that many optimizer steps; the schedule is laid out
# over the capped step count. It exists for smoke runs and benchmarks.
# group_by_length: batch examples of similar length together (within random windows of 50
# batches), so dynamic padding wastes little; off by default, as in the paper's setup.
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-5,
    "batch_size": 8,
    "epochs": 3,
    "fixed_mask_learning_rate": 5e-5,
    "fixed_mask_epochs": 3,
    "max_seq_length": 128,
    "doc_stride": 128,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "max_grad_norm": 1.0,
    "gradient_accumulation_steps": 1,
    "eval_batch_size": 64,
    "max_train_examples": None,
    "max_eval_examples": None,
    "max_steps": None,
    "precision": "auto",
    "num_threads": None,
    "checkpoint_every_steps": 200,
    "group_by_length": False,
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Models a config may name without defining them; entries under cfg.models extend/override.
BUILTIN_MODELS: dict[str, dict] = {
    "minilm": {"source": "offline-minilm", "hub_id": "sentence-transformers/all-MiniLM-L6-v2"},
    "bert-large": {"source": "hub", "hub_id": "bert-large-cased"},
    "tiny-random": {"source": "tiny-random"},
    "tiny-random-llama": {"source": "tiny-random-llama"},
}
MODEL_SOURCES = ("offline-minilm", "hub", "path", "tiny-random", "tiny-random-llama")

TOP_LEVEL_KEYS = ("name", "model", "models", "tasks", "rates", "seeds", "task_seeds", "training",
                  "task_training", "methods", "data", "head_pattern")
DATA_ENV = {"glue_dir": "GLUE_DIR", "squad_dir": "SQUAD_DIR"}


def task_names() -> tuple[str, ...]:
    return TASK_NAMES


def check_task(task: str) -> str:
    known = task_names()
    if task not in known:
        raise ValueError(f"unknown task {task!r}; known tasks: {' '.join(known)}")
    return task


# ----------------------------------------------------------------------------- loading

def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config, fill the defaults and validate it; ``name`` defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as handle:
        raw = yaml.safe_load(handle)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping, got {type(raw).__name__}")
    cfg = fill_defaults(raw, default_name=path.stem)
    try:
        validate_config(cfg)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return cfg


def fill_defaults(raw: dict, default_name: str = "default") -> dict:
    """A copy of ``raw`` with every top-level section present (empty sections as {} / [])."""
    cfg = copy.deepcopy(raw)
    cfg.setdefault("name", default_name)
    cfg.setdefault("model", "minilm")
    cfg["models"] = {**copy.deepcopy(BUILTIN_MODELS), **(cfg.get("models") or {})}
    cfg["tasks"] = list(cfg.get("tasks") or [])
    cfg["rates"] = list(cfg.get("rates") or [0.5])
    cfg["seeds"] = list(cfg.get("seeds") or [0])
    for section in ("task_seeds", "training", "task_training", "methods"):
        cfg[section] = cfg.get(section) or {}
    cfg["data"] = {"glue_dir": None, "squad_dir": None, **(cfg.get("data") or {})}
    # No pattern: the head is exactly what the loader newly initialised (diffprune.models);
    # a pattern here is an explicit override for models whose loader cannot tell.
    cfg.setdefault("head_pattern", None)
    # "full_finetuning:" with no body in YAML is None: the registry name is the key itself.
    cfg["methods"] = {key: (entry if entry is not None else {}) for key, entry in cfg["methods"].items()}
    return cfg


def _check_training_section(where: str, values: Any) -> None:
    if values is None:
        return
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of training settings, got {values!r}")
    unknown = set(values) - set(TRAINING_DEFAULTS)
    if unknown:
        raise ValueError(f"{where}: unknown training setting(s) {sorted(unknown)}; "
                         f"known: {sorted(TRAINING_DEFAULTS)}")
    if "precision" in values and values["precision"] not in PRECISIONS:
        raise ValueError(f"{where}: precision must be one of {PRECISIONS}, got {values['precision']!r}")


def _check_task_keys(section: str, per_task: dict) -> None:
    known_tasks = task_names()
    for task in per_task:
        if task not in known_tasks:
            raise ValueError(f"unknown task {task!r} in {section}; known tasks: {' '.join(known_tasks)}")


def _check_seed_list(where: str, seeds: Any) -> None:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"{where} must be a non-empty list of integers >= 0, got {seeds!r}")


def validate_config(cfg: dict) -> None:
    """Raise ValueError with a clear message for anything the runner or workflow cannot run."""
    unknown = set(cfg) - set(TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(f"unknown top-level key(s) {sorted(unknown)}; known: {list(TOP_LEVEL_KEYS)}")
    if not isinstance(cfg.get("name"), str) or not cfg["name"] or "/" in cfg["name"]:
        raise ValueError(f"name must be a non-empty string without '/', got {cfg.get('name')!r}")

    known_tasks = task_names()
    for task in cfg["tasks"]:
        if task not in known_tasks:
            raise ValueError(f"unknown task {task!r} in tasks; known tasks: {' '.join(known_tasks)}")
    for section in ("task_seeds", "task_training"):
        _check_task_keys(section, cfg[section])

    for rate in cfg["rates"]:
        check_rate(rate)
    if len({float(r) for r in cfg["rates"]}) != len(cfg["rates"]):
        raise ValueError(f"rates has duplicates: {cfg['rates']}")
    for where, seeds in [("seeds", cfg["seeds"])] + [(f"task_seeds.{t}", s) for t, s in cfg["task_seeds"].items()]:
        _check_seed_list(where, seeds)

    if cfg["model"] not in cfg["models"]:
        raise ValueError(f"unknown model key {cfg['model']!r}; defined models: {sorted(cfg['models'])}")
    for key, spec in cfg["models"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"models.{key} must be a mapping, got {spec!r}")
        if spec.get("source") not in MODEL_SOURCES:
            raise ValueError(f"models.{key}.source must be one of {MODEL_SOURCES}, got {spec.get('source')!r}")
        _check_training_section(f"models.{key}.training", spec.get("training"))

    _check_training_section("training", cfg["training"])
    for task, values in cfg["task_training"].items():
        _check_training_section(f"task_training.{task}", values)

    if not isinstance(cfg["data"], dict) or set(cfg["data"]) - set(DATA_ENV):
        raise ValueError(f"data accepts only {sorted(DATA_ENV)}, got {cfg['data']!r}")

    import re

    try:
        if cfg["head_pattern"] is not None:
            re.compile(cfg["head_pattern"])
    except (re.error, TypeError) as error:
        raise ValueError(f"head_pattern is not a valid regular expression: {error}") from None

    if not cfg["methods"]:
        raise ValueError("methods is empty: name at least one run key, e.g. `full_finetuning: {method: full_finetuning}`")
    from diffprune.registry import METHODS, method_class  # noqa: PLC0415 (imports torch)

    for key, entry in cfg["methods"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"methods.{key} must be a mapping, got {entry!r}")
        if "/" in str(key):
            raise ValueError(f"method key {key!r} must not contain '/'")
        name = entry.get("method", key)
        if name not in METHODS:
            raise ValueError(f"methods.{key}: unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
        _check_training_section(f"methods.{key}.training", entry.get("training"))
        per_task = entry.get("task_training")
        if per_task is not None and not isinstance(per_task, dict):
            raise ValueError(f"methods.{key}.task_training must map task names to training settings, got {per_task!r}")
        _check_task_keys(f"methods.{key}.task_training", per_task or {})
        _check_method_tasks_and_seeds(cfg, key, entry)
        for task, values in (per_task or {}).items():
            _check_training_section(f"methods.{key}.task_training.{task}", values)
        try:
            cls = method_class(name)
        except ImportError as error:
            raise ValueError(f"methods.{key}: the implementation of method {name!r} ({METHODS[name]}) "
                             f"cannot be imported: {error}") from None
        _, options, _ = method_entry(cfg, key)
        unknown_options = set(options) - set(cls.option_defaults())
        if unknown_options:
            raise ValueError(f"methods.{key}: method {name!r} has no option(s) {sorted(unknown_options)}; "
                             f"it accepts {sorted(cls.option_defaults())}")
        task_rates = entry.get("task_rates")
        if task_rates is not None and not isinstance(task_rates, dict):
            raise ValueError(f"methods.{key}.task_rates must map task names to rate lists, got {task_rates!r}")
        _check_task_keys(f"methods.{key}.task_rates", task_rates or {})
        for where, own_rates in [("rates", entry.get("rates"))] + [(f"task_rates.{t}", r) for t, r in (task_rates or {}).items()]:
            if own_rates is None:
                continue
            if not cls.projected:
                raise ValueError(f"methods.{key}: `{where.split('.')[0]}` applies only to projected methods (diff "
                                 f"pruning and its variants); {name!r} does not fan out per rate")
            if not isinstance(own_rates, list) or not own_rates:
                raise ValueError(f"methods.{key}.{where} must be a non-empty list of percentages, got {own_rates!r}")
            for rate in own_rates:
                check_rate(rate)
            if len({float(r) for r in own_rates}) != len(own_rates):
                raise ValueError(f"methods.{key}.{where} has duplicates: {own_rates}")
        needed_key(cfg, key)  # a method that reads another method's runs needs a provider
        if cls.reuses:
            providers = [k for k, e in cfg["methods"].items() if e.get("method", k) == cls.reuses]
            if not providers:
                raise ValueError(f"methods.{key}: method {name!r} reuses the runs of {cls.reuses!r}, "
                                 f"but no methods entry has `method: {cls.reuses}`; add one")
    for key in cfg["methods"]:
        _check_provider_runs(cfg, key)


def _check_method_tasks_and_seeds(cfg: dict, key: str, entry: dict) -> None:
    """``methods[K].tasks`` (a subset of the config's tasks) and ``methods[K].task_seeds``."""
    own_tasks = entry.get("tasks")
    if own_tasks is not None:
        if not isinstance(own_tasks, list) or not own_tasks:
            raise ValueError(f"methods.{key}.tasks must be a non-empty list of task names, got {own_tasks!r}")
        outside = [t for t in own_tasks if t not in cfg["tasks"]]
        if outside:
            raise ValueError(f"methods.{key}.tasks names {outside}, which the config's `tasks` does not run "
                             f"({cfg['tasks']}); add them there or drop them here")
    own_seeds = entry.get("task_seeds")
    if own_seeds is not None:
        if not isinstance(own_seeds, dict):
            raise ValueError(f"methods.{key}.task_seeds must map task names to seed lists, got {own_seeds!r}")
        _check_task_keys(f"methods.{key}.task_seeds", own_seeds)
        for task, seeds in own_seeds.items():
            _check_seed_list(f"methods.{key}.task_seeds.{task}", seeds)


def _check_provider_runs(cfg: dict, key: str) -> None:
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


# ----------------------------------------------------------------------------- queries

def method_entry(cfg: dict, key: str) -> tuple[str, dict, dict]:
    """(registry name, method options, training overrides) of run key ``key``."""
    if key not in cfg["methods"]:
        raise ValueError(f"unknown method key {key!r}; this config defines: {', '.join(cfg['methods'])}")
    entry = dict(cfg["methods"][key] or {})
    name = entry.pop("method", key)
    training = dict(entry.pop("training", None) or {})
    entry.pop("rates", None)  # which runs exist, not a method option (see rates_for)
    entry.pop("task_rates", None)  # which runs exist (see rates_for)
    entry.pop("task_training", None)  # per-task schedule, not a method option (see method_task_training)
    entry.pop("tasks", None)  # which runs exist (see method_tasks)
    entry.pop("task_seeds", None)  # which runs exist (see seeds_for)
    return name, entry, training


def method_task_training(cfg: dict, key: str, task: str) -> dict:
    """The training settings key ``key`` overrides on ``task`` alone (``methods[key].task_training``)."""
    method_entry(cfg, key)  # unknown key -> the same clear error
    per_task = (cfg["methods"][key] or {}).get("task_training") or {}
    return dict(per_task.get(task) or {})


def method_keys(cfg: dict) -> list[str]:
    return list(cfg["methods"])


def _method_class_of(cfg: dict, key: str):
    from diffprune.registry import method_class  # noqa: PLC0415 (imports torch)

    return method_class(method_entry(cfg, key)[0])


def is_projected(cfg: dict, key: str) -> bool:
    """Runs of this key fan out per rate (projection + fixed-mask finetuning)."""
    return bool(_method_class_of(cfg, key).projected)


def reused_key(cfg: dict, key: str) -> str | None:
    """The config key whose train run this key reuses instead of training its own, or None.

    Non-adaptive diff pruning (``reuses = "full_finetuning"``) takes the run of the entry whose
    method is full_finetuning; if several entries use that method, the one whose key equals the
    method name wins, otherwise the first in the file.
    """
    reuses = _method_class_of(cfg, key).reuses
    if not reuses:
        return None
    providers = [k for k in cfg["methods"] if method_entry(cfg, k)[0] == reuses]
    if not providers:
        raise ValueError(f"method key {key!r} reuses {reuses!r}, which no methods entry provides")
    return reuses if reuses in providers else providers[0]


def needed_key(cfg: dict, key: str) -> str | None:
    """The config key whose train run (same task and seed) this key's train run reads, or None.

    For methods with ``needs_run`` (critical-layer finetuning without explicit layers). The
    provider is chosen as for ``reused_key``: the key named like the method, else the first.
    """
    name, options, _ = method_entry(cfg, key)
    cls = _method_class_of(cfg, key)
    if not cls.needs_run_for(options):
        return None
    providers = [k for k in cfg["methods"] if method_entry(cfg, k)[0] == cls.needs_run]
    if not providers:
        raise ValueError(f"methods.{key}: method {name!r} reads the runs of {cls.needs_run!r}, but no methods "
                         f"entry has `method: {cls.needs_run}`; add one (or give `{cls.run_option}`)")
    return cls.needs_run if cls.needs_run in providers else providers[0]


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
    """How a rate appears in run directory names: as in the config (0.5 -> "0.5", 1 -> "1.0")."""
    return str(float(rate))


def projected_keys(cfg: dict) -> list[str]:
    return [k for k in cfg["methods"] if is_projected(cfg, k)]


def model_spec(cfg: dict, model_key: str | None = None) -> dict:
    """The model entry (without its training overrides) handed to ``models.load_pretrained``."""
    key = model_key or cfg["model"]
    if key not in cfg["models"]:
        raise ValueError(f"unknown model key {key!r}; defined models: {sorted(cfg['models'])}")
    return {k: v for k, v in cfg["models"][key].items() if k != "training"}


def data_key(task: str) -> str:
    """The ``data`` entry a task reads: ``squad_dir`` for SQuAD, ``glue_dir`` for the rest."""
    return "squad_dir" if check_task(task) == "squad" else "glue_dir"


def data_config(cfg: dict, task: str | None = None) -> dict:
    """Data locations: the config's, else $GLUE_DIR / $SQUAD_DIR, else None (the Hub).

    Relative paths are relative to the working directory (the repository root when the
    workflow runs). A named folder that does not exist is an error here, before any model
    loads: every folder, or with ``task`` only the one that task reads (a GLUE run does not
    care whether the SQuAD folder exists yet).
    """
    resolved = {}
    for key, env in DATA_ENV.items():
        value = cfg["data"].get(key) or os.environ.get(env) or None
        where = f"data.{key}" if cfg["data"].get(key) else f"${env}"
        if value is not None:
            value = os.path.abspath(os.path.expanduser(str(value)))
            if not os.path.isdir(value) and (task is None or data_key(task) == key):
                raise FileNotFoundError(f"{where} names a data folder that does not exist: {value}")
        resolved[key] = value
    return resolved


def default_training(task: str) -> dict:
    values = dict(TRAINING_DEFAULTS)
    if task in FIVE_FIXED_MASK_EPOCH_TASKS:
        values["fixed_mask_epochs"] = 5
    return values


def resolve_training(cfg: dict, task: str, method_key: str | None, phase: str = "train",
                     overrides: dict | None = None, model_key: str | None = None) -> dict:
    """The training settings of one run (see the module docstring for the order).

    ``method_key`` None: no method layer (the ``evaluate`` verb, which trains nothing).
    """
    if phase not in ("train", "prune"):
        raise ValueError(f"phase must be 'train' or 'prune', got {phase!r}")
    check_task(task)
    method_training = method_entry(cfg, method_key)[2] if method_key is not None else {}
    method_task = method_task_training(cfg, method_key, task) if method_key is not None else {}
    model = cfg["models"].get(model_key or cfg["model"], {})
    _check_training_section("--set", overrides)
    values = default_training(task)
    for layer in (cfg["training"], model.get("training"), cfg["task_training"].get(task),
                  method_training, method_task, overrides):
        values.update(layer or {})
    if phase == "prune":
        values["learning_rate"] = values["fixed_mask_learning_rate"]
        values["epochs"] = values["fixed_mask_epochs"]
    return _coerce_training(values)


def _coerce_training(values: dict) -> dict:
    """Types fixed and ranges checked (YAML reads 1e-5 as a string: PyYAML follows YAML 1.1)."""
    out = dict(values)
    for key in ("learning_rate", "fixed_mask_learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm"):
        out[key] = float(out[key])
    for key in ("batch_size", "epochs", "fixed_mask_epochs", "max_seq_length", "doc_stride",
                "gradient_accumulation_steps", "eval_batch_size", "checkpoint_every_steps"):
        out[key] = int(out[key])
        if out[key] < (0 if key in ("epochs", "fixed_mask_epochs") else 1):
            raise ValueError(f"training.{key} must be a positive integer, got {values[key]!r}")
    for key in ("max_train_examples", "max_eval_examples", "max_steps", "num_threads"):
        if out[key] is not None:
            out[key] = int(out[key])
            if out[key] < 1:
                raise ValueError(f"training.{key} must be null or a positive integer, got {values[key]!r}")
    if not isinstance(out["group_by_length"], bool):
        raise ValueError(f"training.group_by_length must be true or false, got {values['group_by_length']!r}")
    if not 0.0 <= out["warmup_ratio"] <= 1.0:
        raise ValueError(f"training.warmup_ratio must be in [0, 1], got {values['warmup_ratio']!r}")
    if out["precision"] not in PRECISIONS:
        raise ValueError(f"training.precision must be one of {PRECISIONS}, got {out['precision']!r}")
    return out


def parse_overrides(items: list[str] | None) -> dict:
    """``["lr=1e-4", "epochs=1"]`` -> ``{"lr": 1e-4, "epochs": 1}`` (values parsed as YAML)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        parsed = yaml.safe_load(value) if value.strip() else None
        if isinstance(parsed, str):
            # PyYAML follows YAML 1.1, where "1e-4" is a string; a number is what was meant.
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        overrides[key.strip()] = parsed
    _check_training_section("--set", overrides)
    return overrides


# ----------------------------------------------------------------------------- run layout

def run_dir(results_root: str | os.PathLike, cfg: dict, task: str, key: str, seed: int,
            rate: float | None = None) -> Path:
    """``<root>/<name>/runs/<task>/<key>/[rate<R>/]seed<S>`` (see docs/ARCHITECTURE.md)."""
    path = Path(results_root) / cfg["name"] / "runs" / task / key
    if rate is not None:
        path = path / f"rate{rate_label(rate)}"
    return path / f"seed{int(seed)}"


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
