"""The config schema (``workflow/schemas/config.schema.yaml``) as Python sees it.

One declaration of every config key but the methods' own options: its type, range, default
and help text. This module reads config files (YAML 1.2 numbers, so ``1e-5`` is a float),
validates them against the schema with messages that name the key and the fix, and derives
from the schema what the rest of the code needs: the training defaults, the typed
``TrainingSettings`` and the generated "Training settings" section of docs/ARCHITECTURE.md
(``python -m diffprune.config_schema --write-docs``). A method's options are declared by the
method itself (``diffprune.method_options``), checked with this module's validator and listed
by ``python -m diffprune methods``. The module imports neither torch nor the method registry.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import re
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

# The schema's one source is the workflow's (Snakemake validates configs against it); an
# installed wheel carries it inside the package (pyproject maps workflow/schemas there).
_CHECKOUT_SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
_PACKAGED_SCHEMA = Path(__file__).resolve().parent / "workflow_schemas" / "config.schema.yaml"
SCHEMA_PATH = _CHECKOUT_SCHEMA if _CHECKOUT_SCHEMA.is_file() else _PACKAGED_SCHEMA
ARCHITECTURE_DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"


class ConfigError(ValueError):
    """A config that does not fit the schema; the message names every offending key."""


# ----------------------------------------------------------------------------- YAML


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: PyYAML follows YAML 1.1, where ``1e-5``
    (no dot) is a string, so ``l0_lambda: 1e-7`` would reach the code as text."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""", re.X),
    list("-+0123456789"),
)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {error}") from None


def read_config_file(path: str | Path) -> dict:
    """The raw mapping of a config file (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of keys (name, tasks, methods, ...), "
                          f"got a {type(raw).__name__}")
    return raw


# ----------------------------------------------------------------------------- schema


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(encoding="utf-8"), Loader=ConfigLoader)  # noqa: S506


def _validator(subschema: dict):
    import jsonschema

    full = {**subschema, "$defs": schema()["$defs"]}
    return jsonschema.Draft202012Validator(full, format_checker=jsonschema.FormatChecker())


_TYPE_WORDS = {"array": "a list", "object": "a mapping", "number": "a number", "integer": "an integer",
               "boolean": "true or false", "string": "a string", "null": "null"}


def _dotted(parts) -> str:
    return ".".join(str(p) for p in parts)


def _is_key_of(root: Any, path, name: Any) -> bool:
    """Whether ``name`` is a key (not a value) of the mapping at ``path`` (propertyNames errors)."""
    for part in path:
        try:
            root = root[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(root, dict) and isinstance(name, str) and name in root


def _explain(error, prefix: str, root: Any = None) -> str:
    """One line per schema violation: the key, what it must be, what it is, and the fix."""
    path = _dotted([*([prefix] if prefix else []), *error.absolute_path]) or "the config"
    value, kind, rule = error.instance, error.validator, error.validator_value
    if kind == "pattern" and _is_key_of(root, error.absolute_path, value):
        return f"{path}: the key {value!r} must be {error.schema.get('description') or 'a string matching ' + rule}"
    got = f"got {value!r}" + (" (a string)" if isinstance(value, str) and kind == "type" else "")
    if kind == "type":
        wanted = [rule] if isinstance(rule, str) else list(rule)
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted)
        if "array" in wanted and not isinstance(value, (list, dict)):
            last = str(error.absolute_path[-1]) if error.absolute_path else path
            return f"{path} must be {words}, got the single value {value!r}: write `{last}: [{value}]`"
        if wanted == ["object"] and isinstance(value, list):
            return (f"{path} must be {words} of `key: value` entries, got a list {value!r}"
                    + (": write e.g. `methods: {full_finetuning: {method: full_finetuning}}`"
                       if path == "methods" else ""))
        return f"{path} must be {words}, {got}"
    if kind == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(known)) if isinstance(value, dict) else []
        what = ("training setting(s)" if set(known) == set(training_properties())
                else "top-level key(s)" if not error.absolute_path and not prefix else "key(s)")
        return f"{path}: unknown {what} {extra}; known: {known}"
    if kind == "enum":
        if list(rule) == list(schema()["$defs"]["task"]["enum"]):
            return f"unknown task {value!r} in {path}; known tasks: {' '.join(rule)}"
        return f"{path} must be one of {', '.join(map(str, rule))}, {got}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        about = f" ({error.schema['description']})" if error.schema.get("description") else ""
        return f"{path} must be {bounds[kind]} {rule}{about}, {got}"
    if kind == "pattern":
        return f"{path} must be {error.schema.get('description') or 'a string matching ' + rule}, {got}"
    if kind == "propertyNames":
        return f"{path} has a key {value!r} that is not allowed: {error.message}"
    if kind == "minItems":
        return f"{path} must be a non-empty list, got {value!r}"
    if kind == "uniqueItems":
        return f"{path} has duplicates: {value!r}"
    if kind == "minProperties" and path == "methods":
        return "methods is empty: name at least one run key, e.g. `full_finetuning: {method: full_finetuning}`"
    if kind == "format" and rule == "regex":
        return f"{path} is not a valid regular expression, {got}"
    return f"{path}: {error.message}"


def check(value: Any, subschema: dict, prefix: str = "") -> None:
    """Raise ConfigError listing every violation of ``subschema`` (keys named from ``prefix``)."""
    errors = sorted(_validator(subschema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = list(dict.fromkeys(_explain(error, prefix, value) for error in errors))
        raise ConfigError(lines[0] if len(lines) == 1 else "; ".join(lines))


def check_config(raw: dict) -> None:
    """The whole config against the schema (a method's own options are checked against its
    ``Options`` by diffprune.settings, where the registry names the method)."""
    check(raw, {k: v for k, v in schema().items() if k != "$defs"})


# ----------------------------------------------------------------------------- training


def declared_defaults(properties: dict) -> dict:
    """Each property's ``default`` from the schema (a fresh copy), for those that declare one."""
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}


def top_level_defaults() -> dict:
    """The defaults of the config's top-level keys (model, rates, seeds, head_pattern)."""
    return declared_defaults(schema()["properties"])


def data_defaults() -> dict:
    """The defaults of the `data` section (each data folder: null, i.e. the environment or the Hub)."""
    return declared_defaults(schema()["properties"]["data"]["properties"])


def training_properties() -> dict:
    return schema()["$defs"]["training"]["properties"]


def training_defaults() -> dict:
    return {key: spec.get("default") for key, spec in training_properties().items()}


_PY_TYPES = {"number": float, "integer": int, "boolean": bool, "string": str}


def _python_type(spec: dict):
    types = spec.get("type", "string")
    types = [types] if isinstance(types, str) else list(types)
    main = next((_PY_TYPES[t] for t in types if t in _PY_TYPES), str)
    return Optional[main] if "null" in types else main


# The typed training settings of one run, generated from the schema: one field per setting,
# with its default and its help text (``fields(TrainingSettings)[i].metadata["help"]``).
TrainingSettings = dataclasses.make_dataclass(
    "TrainingSettings",
    [(key, _python_type(spec), dataclasses.field(default=spec.get("default"),
                                                 metadata={"help": spec.get("description", "")}))
     for key, spec in training_properties().items()],
    frozen=True,
)
TrainingSettings.__doc__ = "The resolved training settings of one run (declared in config.schema.yaml)."


def check_training(values: Any, where: str) -> None:
    check(values, schema()["$defs"]["training"], where)


def typed_training(values: dict, where: str = "training") -> TrainingSettings:
    """A complete settings mapping, checked, as ``TrainingSettings`` (numbers as floats)."""
    check_training(values, where)
    typed = {}
    for key, spec in training_properties().items():
        value = values.get(key, spec.get("default"))
        kind = _python_type(spec)
        base = getattr(kind, "__args__", (kind,))[0]
        typed[key] = base(value) if value is not None and base in (float, int) else value
    return TrainingSettings(**typed)


# ----------------------------------------------------------------------------- docs

DOC_BEGIN = ("<!-- generated from workflow/schemas/config.schema.yaml: "
             "python -m diffprune.config_schema --write-docs -->")
DOC_END = "<!-- end of generated section -->"


def _default_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _range_text(spec: dict) -> str:
    parts = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in spec:
            parts.append(f"{sign} {spec[key]}")
    if "enum" in spec:
        parts.append(" / ".join(map(str, spec["enum"])))
    return ", ".join(parts)


def option_line(name: str, spec: dict) -> str:
    extra = _range_text(spec)
    return (f"`{name}` ({_default_text(spec.get('default'))}{'; ' + extra if extra else ''}): "
            f"{spec.get('description', '')}")


def render_docs() -> str:
    """The generated part of docs/ARCHITECTURE.md: the training settings, from the schema.
    (The methods' options are not in a file: ``python -m diffprune methods`` prints them.)"""
    lines = [DOC_BEGIN, "", "### Training settings", "",
             "Keys of `training`, `models.<M>.training`, `task_training.<T>`, `methods.<K>.training` and "
             "`methods.<K>.task_training.<T>` (default; range):", ""]
    lines += [f"- {option_line(k, spec)}" for k, spec in training_properties().items()]
    return "\n".join(lines + ["", DOC_END])


def documented_section(text: str) -> str | None:
    start, end = text.find(DOC_BEGIN), text.find(DOC_END)
    return None if start < 0 or end < 0 else text[start:end + len(DOC_END)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="print or write the docs generated from the config schema")
    parser.add_argument("--write-docs", action="store_true", help=f"replace the generated section of {ARCHITECTURE_DOC.name}")
    args = parser.parse_args(argv)
    generated = render_docs()
    if not args.write_docs:
        print(generated)
        return 0
    from diffprune.atomic import write_text

    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    current = documented_section(text)
    if current is None:
        print(f"{ARCHITECTURE_DOC} has no generated section (between {DOC_BEGIN!r} and {DOC_END!r})",
              file=sys.stderr)
        return 1
    write_text(ARCHITECTURE_DOC, text.replace(current, generated))
    return 0


if __name__ == "__main__":
    sys.exit(main())
