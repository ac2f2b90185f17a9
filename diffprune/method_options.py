"""Method options, declared once: as a dataclass in the method's own module.

Each ``Method`` subclass declares the options of its config entry as a nested ``Options``
dataclass, one field per option (the convention of peft's ``LoraConfig``, with the range
added)::

    class LoRA(Method):
        @dataclass(frozen=True)
        class Options:
            rank: int = option(8, "rank r of the update", ge=1)
            target_modules: list[str] | None = option(None, "module names to wrap; null = ...", min_items=1)

The annotation is the option's type: ``bool``, ``int``, ``float`` (an integer is a number
too), ``str``, a ``Literal`` of strings, ``list[...]`` of one of these, or any of them
``| None``. ``option`` gives the default, the help text and the range: ``ge`` / ``gt`` /
``le`` / ``lt`` (>=, >, <=, <) and ``min_items`` (a list's shortest length). A plain
``field(default=..., metadata={"help": ...})`` works as well; every option needs a default.

Everything else is derived from that one declaration: the defaults
(``Method.option_defaults``), the check of a config entry's options (an unknown key, a wrong
type or a value out of range, named with the key and the allowed values: ``check_options``,
called at planning by ``diffprune.settings`` and on every ``Method(**options)``) and the
method reference that ``python -m diffprune methods`` prints (``render_method_docs``): it is
generated when asked for, not kept in a file, so adding a method changes no docs. The check
reuses the config schema's validator and messages (``diffprune.config_schema``), so an option
reads like any other config key; this module imports neither torch nor the registry.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

from diffprune import config_schema
from diffprune.config_schema import ConfigError

# option()'s range keywords -> the JSON Schema keywords the validator and the docs read.
_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum",
           "min_items": "minItems"}
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def option(default: Any, help: str, **bounds: Any) -> Any:  # noqa: A002 (peft's metadata name)
    """A method option: a dataclass field with its default, its help text (``metadata["help"]``)
    and its range (``ge``, ``gt``, ``le``, ``lt``, ``min_items``, kept in the metadata)."""
    unknown = sorted(set(bounds) - set(_BOUNDS))
    if unknown:  # a misspelt bound would otherwise be silently unchecked
        raise TypeError(f"option() got unknown range keyword(s) {unknown}; known: {sorted(_BOUNDS)}")
    metadata = {"help": help, **bounds}
    if isinstance(default, (list, dict)):  # dataclasses refuse a mutable default
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _default(field: dataclasses.Field, where: str) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{where}: option {field.name!r} has no default; every method option needs one")


def defaults(options_cls: type) -> dict[str, Any]:
    """{option: default} in declaration order."""
    where = options_cls.__qualname__
    return {f.name: _default(f, where) for f in dataclasses.fields(options_cls)}


def _type_schema(annotation: Any, where: str) -> dict:
    """The JSON Schema of one option's type annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _type_schema(rest[0], where)
            if "enum" in inner:
                return {**inner, "enum": [*inner["enum"], None]}
            return {**inner, "type": [inner["type"], "null"]}
    elif origin is typing.Literal and args and all(isinstance(a, str) for a in args):
        return {"enum": list(args)}
    elif origin is list and len(args) == 1:
        return {"type": "array", "items": _type_schema(args[0], where)}
    elif annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    raise TypeError(f"{where}: unsupported option type {annotation!r}; an option is a bool, int, float, str, "
                    "Literal of strings or list of these, or one of them | None (what a YAML config can hold)")


@functools.lru_cache(maxsize=None)
def schema_of(options_cls: type) -> dict:
    """The JSON Schema of a method's options (the form the config schema's validator checks and
    its docs generator reads): type, range, default and help text of each option."""
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"{options_cls!r} is not a dataclass: declare a method's options with @dataclass")
    hints = typing.get_type_hints(options_cls)
    properties = {}
    for field in dataclasses.fields(options_cls):
        where = f"{options_cls.__qualname__}.{field.name}"
        spec = _type_schema(hints[field.name], where)
        spec.update({_BOUNDS[k]: v for k, v in field.metadata.items() if k in _BOUNDS})
        spec["default"] = _default(field, options_cls.__qualname__)
        spec["description"] = field.metadata.get("help", "")
        properties[field.name] = spec
    return {"type": "object", "properties": properties, "additionalProperties": False}


def check_options(method: str, options_cls: type, values: dict, where: str) -> None:
    """Raise ConfigError for an option ``options_cls`` does not declare (listing the ones it
    does), of the wrong type or out of its range; messages name ``where``.<option>."""
    accepted = sorted(schema_of(options_cls)["properties"])
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        accepts = f"it accepts {accepted}" if accepted else "it has no options"
        if where == method:  # built in Python, not from a config entry
            raise ConfigError(f"method {method!r} got unknown option(s) {unknown}; {accepts}")
        raise ConfigError(f"{where}: method {method!r} has no option(s) {unknown}; {accepts}")
    config_schema.check(values, schema_of(options_cls), where)
    for key, value in values.items():  # JSON Schema's bounds let NaN through (NaN <= 0 is false)
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"{where}.{key} must be a finite number, got {value!r}")


METHOD_DOCS_HEADER = ("The keys of a `methods:` entry besides `method`, `tasks`, `rates`, `task_rates`, `task_seeds`, "
                      "`training` and `task_training` (default; range):")


def render_method_docs(methods: dict[str, type]) -> str:
    """What ``python -m diffprune methods`` prints: every method (name -> Method class) with
    its options."""
    return "\n".join(["Method options", "", METHOD_DOCS_HEADER, "", *docs_lines(methods)])


def docs_lines(methods: dict[str, type]) -> list[str]:
    """Per method (name -> Method class): its summary, then each option with its default,
    range and help text."""
    lines = []
    for name, cls in methods.items():
        options = schema_of(cls.Options)["properties"]
        summary = f" {cls.summary}." if cls.summary else ""
        lines.append(f"- `{name}`:{summary}" + ("" if options else " No options."))
        lines += [f"  - {config_schema.option_line(k, spec)}" for k, spec in options.items()]
    return lines
