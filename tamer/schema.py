"""Strict schemas for what users and stored rows give tamer, on pydantic v2: the config (tamer/config.py),
and the plans, device facts and outcomes read back from JSON (their from_dict).

    RunConfig.from_mapping(data)            # -> a validated RunConfig, or a one-line ConfigError
    validate(Plan, data, "start_plan.")     # -> a Plan (a dataclass) checked by the same rules

Every structure is a `Schema`: unknown keys are errors, values are never converted from another type
(an integer is not taken for a boolean, nor a string for an integer) except numbers written as
`1e-4` (YAML 1.1 reads that as a string), and pydantic's errors become tamer's one-line messages
naming the key's path (`lora.r: expected an integer, got 'big'`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from typing import Annotated, Any, ClassVar, Literal

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from tamer.errors import ConfigError

_FLOAT_SPELLING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number_from_text(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT_SPELLING.match(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
    return value


Number = Annotated[float, BeforeValidator(_number_from_text)]
"""A float that also takes an integer and any float spelling of a string (`1e-4`, `.5e-3`)."""
Seconds = Annotated[Number, Field(gt=0, json_schema_extra={"unit": "seconds"})]
"""A positive duration in seconds."""

_TYPE_NAMES = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
}

STRICT = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


class Schema(BaseModel):
    """A strict structure: unknown keys and wrong types are errors. Build from user or stored data with
    `from_mapping` (one-line ConfigErrors); constructing with keywords raises pydantic's ValidationError."""

    model_config = STRICT

    FOREIGN_NAMES: ClassVar[dict[str, str]] = {}
    """Other tools' names for this structure's keys, each refused with the key to use instead."""

    @classmethod
    def from_mapping(cls, data: Any, prefix: str = "") -> Any:
        """`data` validated as this schema; errors name keys under `prefix` (e.g. `start_plan.`)."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(describe(error, cls, prefix)) from None


@functools.cache
def schema_of(cls: type) -> type[Schema]:
    """A Schema with the fields of the dataclass `cls` (derived, never declared twice)."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            fields[field.name] = (hints[field.name], field.default)
        elif field.default_factory is not dataclasses.MISSING:
            fields[field.name] = (hints[field.name], Field(default_factory=field.default_factory))
        else:
            fields[field.name] = (hints[field.name], ...)
    return create_model(cls.__name__, __base__=Schema, **fields)


def validate(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from `data` checked under the schemas' rules; errors name keys under `prefix`."""
    checked = schema_of(cls).from_mapping(data, prefix)
    return cls(**{name: getattr(checked, name) for name in type(checked).model_fields})


def _schema_in(annotation: Any) -> type[BaseModel] | None:
    """The schema an annotation holds (`LoraConfig`, `LoraConfig | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _schema_in(argument)
        if found is not None:
            return found
    return None


def _literal_values(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [value for argument in typing.get_args(annotation) for value in _literal_values(argument)]


def _plain(number: Any) -> Any:
    """`0` for a bound pydantic hands over as `0.0`."""
    return int(number) if isinstance(number, float) and number.is_integer() else number


def describe(error: ValidationError, cls: type[BaseModel], prefix: str = "") -> str:
    """The first of pydantic's errors as tamer's one line: the key's path, what was wrong, what to give."""
    # an unknown key is the likeliest mistake (a misspelt key also leaves its intended one missing)
    detail = min(
        error.errors(include_url=False), key=lambda item: (item["type"] != "extra_forbidden", item["type"] == "missing")
    )
    path, owner, field = prefix.rstrip("."), cls, None
    schema: type[BaseModel] | None = cls
    for item in detail["loc"]:
        if isinstance(item, int):
            path += f"[{item}]"
        elif schema is not None:  # a key of a schema (names that are not, such as union members, are skipped)
            path = f"{path}.{item}" if path else str(item)
            owner, field = schema, schema.model_fields.get(str(item))
            schema = _schema_in(field.annotation) if field is not None else None
    kind, value, context = detail["type"], detail.get("input"), detail.get("ctx", {})
    if kind == "extra_forbidden":
        key = str(detail["loc"][-1])
        foreign = getattr(owner, "FOREIGN_NAMES", {})
        if key in foreign:
            return f"{path}: not a tamer key (Hugging Face / axolotl spelling); {foreign[key]}"
        names = list(owner.model_fields)
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"{path}: unknown key; {hint}known keys: {', '.join(sorted(names))}"
    if kind == "missing":
        return f"{path}: missing; this key has no default, give it"
    if kind == "literal_error" and field is not None:
        return f"{path}: expected one of {', '.join(map(str, _literal_values(field.annotation)))}, got {value!r}"
    if kind in _TYPE_NAMES:
        return f"{path}: expected {_TYPE_NAMES[kind]}, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than"):
        bounds = {type(m): m for m in (field.metadata if field is not None else [])}
        if annotated_types.Ge in bounds and annotated_types.Lt in bounds:
            return f"{path}: must be in [{_plain(bounds[annotated_types.Ge].ge)}, {_plain(bounds[annotated_types.Lt].lt)}), got {value}"
        extra = field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}
        unit = f" {extra['unit']}" if "unit" in extra else ""
        sign, bound = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt")}[kind]
        return f"{path}: must be {sign} {_plain(context[bound])}{unit}, got {value}"
    if kind == "value_error":
        return f"{path}: {context['error']}"
    return f"{path}: {detail['msg']}"
