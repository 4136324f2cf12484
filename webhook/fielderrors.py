"""Field errors in the Kubernetes style: ``<field path>: <what is wrong>: <value>``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


class _Omitted:
    def __repr__(self) -> str:
        return "OMITTED"


OMITTED: Any = _Omitted()


@dataclass(frozen=True)
class FieldError:
    path: str
    detail: str
    value: Any = OMITTED

    def __str__(self) -> str:
        if self.value is OMITTED:
            return f"{self.path}: {self.detail}"
        return f"{self.path}: {self.detail}: {show_value(self.value)}"


def show_value(value: Any, *, limit: int = 80) -> str:
    """A value as JSON, cut short so one bad field cannot flood a message."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join(path: str, key: str | int) -> str:
    """``join("spec", "template")`` -> ``spec.template``; ints index: ``ingress[0]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def type_name(value: Any) -> str:
    """The JSON type of a value, for messages such as 'must be a string, not number'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
