"""Reading, checking and resolving a run configuration (``config/*.yaml``).

The workflow (the Snakefile expands its DAG from ``diffprune.rungraph``) and the runner read
the same file through this module, so "which runs exist" and "what one run trains with" can
never disagree. Every key is declared once (type, range, default, help): a method's own
options by the method (its ``Options`` dataclass, ``diffprune.method_options``), every other
key in ``workflow/schemas/config.schema.yaml``. ``load_config`` checks a config against the
schema (``diffprune.config_schema``) and then checks in Python what needs the method registry:
that each method exists, its options fit its ``Options`` and its own checks, and that a key
building on another key's runs has them.

Training settings resolve as (later wins)::

    the schema's defaults (the paper's, section 4.3)
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
import dataclasses
import os
from pathlib import Path
from typing import Any

from diffprune import config_schema, method_options, rungraph
from diffprune.config_schema import ConfigError

_SCHEMA = config_schema.schema()
# The task names, as diffprune.tasks.TASK_NAMES has them (tests/test_settings.py checks that
# the two agree); read from the schema, because importing the tasks package pulls in torch.
TASK_NAMES = tuple(_SCHEMA["$defs"]["task"]["enum"])

FIVE_FIXED_MASK_EPOCH_TASKS = ("mrpc", "stsb", "rte")

# Built-in training defaults: the paper's settings (section 4.3) plus the runner's knobs,
# with their help text, are declared in the schema ($defs.training).
TRAINING_DEFAULTS: dict[str, Any] = config_schema.training_defaults()
PRECISIONS = tuple(_SCHEMA["$defs"]["training"]["properties"]["precision"]["enum"])
TrainingSettings = config_schema.TrainingSettings

# Models a config may name without defining them; entries under cfg.models extend/override.
BUILTIN_MODELS: dict[str, dict] = {
    "minilm": {"source": "offline-minilm", "hub_id": "sentence-transformers/all-MiniLM-L6-v2"},
    "bert-large": {"source": "hub", "hub_id": "bert-large-cased"},
    "tiny-random": {"source": "tiny-random"},
    "tiny-random-llama": {"source": "tiny-random-llama"},
}
MODEL_SOURCES = tuple(_SCHEMA["$defs"]["model"]["properties"]["source"]["enum"])

TOP_LEVEL_KEYS = tuple(_SCHEMA["properties"])
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
    """Read a YAML config, check it against the schema, fill the defaults and check what
    needs the method registry; ``name`` defaults to the file stem."""
    path = Path(path)
    raw = config_schema.read_config_file(path)
    try:
        config_schema.check_config(raw)
        cfg = fill_defaults(raw, default_name=path.stem)
        validate_config(cfg)
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    return cfg


def fill_defaults(raw: dict, default_name: str = "default") -> dict:
    """A copy of ``raw`` (already checked against the schema) with every top-level section
    present: the schema's defaults where it declares one, else empty sections ({} / [])."""
    cfg = copy.deepcopy(raw)
    cfg.setdefault("name", default_name)  # the config file's name: not something the schema can know
    for key, value in config_schema.top_level_defaults().items():
        cfg.setdefault(key, value)
    cfg["models"] = {**copy.deepcopy(BUILTIN_MODELS), **(cfg.get("models") or {})}
    cfg["tasks"] = list(cfg.get("tasks") or [])
    for section in ("task_seeds", "training", "task_training", "methods"):
        cfg[section] = cfg.get(section) or {}
    cfg["data"] = {**config_schema.data_defaults(), **(cfg.get("data") or {})}
    # "full_finetuning:" with no body in YAML is None: the registry name is the key itself.
    cfg["methods"] = {key: (entry if entry is not None else {}) for key, entry in cfg["methods"].items()}
    return cfg


def validate_config(cfg: dict) -> None:
    """Raise ValueError naming the key and the fix for anything the runner or workflow
    cannot run: first the schema, then what needs the method registry."""
    config_schema.check_config(cfg)
    if cfg["model"] not in cfg["models"]:
        raise ConfigError(f"model: unknown model key {cfg['model']!r}; defined models: {sorted(cfg['models'])}")
    for key, entry in cfg["methods"].items():
        _check_method_entry(cfg, key, entry)
    for key in cfg["methods"]:
        rungraph.check_provider_runs(cfg, key)


def _check_method_entry(cfg: dict, key: str, entry: dict) -> None:
    from diffprune.registry import METHODS, method_class  # noqa: PLC0415 (imports torch)

    name, options, _ = rungraph.method_entry(cfg, key)
    if name not in METHODS:
        raise ConfigError(f"methods.{key}: unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}"
                          + ("" if "method" in entry else f" (no `method:` given, so the key {key!r} is taken "
                                                          "as the method's name)"))
    try:
        cls = method_class(name)
    except ImportError as error:
        raise ConfigError(f"methods.{key}: the implementation of method {name!r} ({METHODS[name]}) "
                          f"cannot be imported: {error}") from None
    outside = [t for t in entry.get("tasks") or [] if t not in cfg["tasks"]]
    if outside:
        raise ConfigError(f"methods.{key}.tasks names {outside}, which the config's `tasks` does not run "
                          f"({cfg['tasks']}); add them there or drop them here")
    for where in ("rates", "task_rates"):
        if entry.get(where) is not None and not cls.projected:
            raise ConfigError(f"methods.{key}: `{where}` applies only to projected methods (diff pruning and its "
                              f"variants); {name!r} does not fan out per rate: drop `{where}`")
    check_method_options(key, name, cls, options)
    rungraph.needed_key(cfg, key)  # a method that reads another method's runs needs a provider
    rungraph.reused_key(cfg, key)  # ... and so does one that reuses another's runs


def check_method_options(key: str, name: str, cls, options: dict) -> None:
    """A method entry's options, at planning: against the method's ``Options`` (each key
    declared, of its type, in its range), then the method's own checks of the options together
    (it is built once)."""
    where = f"methods.{key}"
    method_options.check_options(name, cls.Options, options, where)
    probe = dict(options)
    if cls.needs_run_for(probe):
        probe[cls.run_option] = "<the run it reads>"  # supplied per run by the runner (--from)
    try:
        cls(**probe)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


# ----------------------------------------------------------------------------- queries

def method_task_training(cfg: dict, key: str, task: str) -> dict:
    """The training settings key ``key`` overrides on ``task`` alone (``methods[key].task_training``)."""
    rungraph.method_entry(cfg, key)  # unknown key -> the same clear error
    per_task = (cfg["methods"][key] or {}).get("task_training") or {}
    return dict(per_task.get(task) or {})


def method_keys(cfg: dict) -> list[str]:
    return list(cfg["methods"])


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
    """The training settings of one run (see the module docstring for the order), checked
    against the schema as a whole and typed (``TrainingSettings``), returned as a mapping.

    ``method_key`` None: no method layer (the ``evaluate`` verb, which trains nothing).
    """
    if phase not in ("train", "prune"):
        raise ValueError(f"phase must be 'train' or 'prune', got {phase!r}")
    check_task(task)
    method_training = rungraph.method_entry(cfg, method_key)[2] if method_key is not None else {}
    method_task = method_task_training(cfg, method_key, task) if method_key is not None else {}
    model = cfg["models"].get(model_key or cfg["model"], {})
    config_schema.check_training(overrides or {}, "--set")
    values = default_training(task)
    for layer in (cfg["training"], model.get("training"), cfg["task_training"].get(task),
                  method_training, method_task, overrides):
        values.update(layer or {})
    if phase == "prune":
        values["learning_rate"] = values["fixed_mask_learning_rate"]
        values["epochs"] = values["fixed_mask_epochs"]
    try:
        typed = config_schema.typed_training(values, "training")
    except ConfigError as error:
        raise ConfigError(f"{error} (in the settings resolved for task {task}"
                          + (f", method key {method_key})" if method_key else ")")) from None
    return dataclasses.asdict(typed)


def parse_overrides(items: list[str] | None) -> dict:
    """``["learning_rate=1e-4", "epochs=1"]`` -> ``{"learning_rate": 1e-4, "epochs": 1}``
    (values parsed as YAML 1.2, so 1e-4 is a number), checked against the schema."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        overrides[key.strip()] = config_schema.parse_yaml(value, f"--set {item}") if value.strip() else None
    config_schema.check_training(overrides, "--set")
    return overrides
