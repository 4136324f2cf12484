"""Field errors in the Kubernetes style: ``<field path>: <what is wrong>: <value>``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
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


@dataclass(frozen=True)
class Problem:
    """What is wrong with one value, and the value to write instead when there is one."""

    detail: str
    suggestion: str | None = None

    def message(self) -> str:
        if self.suggestion is None:
            return self.detail
        return f'{self.detail} (did you mean "{self.suggestion}"?)'


def show_value(value: Any, *, limit: int = 80) -> str:
    """A value as JSON, cut short so one bad field cannot flood a message."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not JSON, or nested deeper than orjson writes
        try:
            text = repr(value)
        except RecursionError:
            text = "<nested too deeply to show>"
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


def suggest(value: str, choices: Iterable[str]) -> str | None:
    """The choice a near miss meant: same letters in another case, or a close spelling."""
    options = list(choices)
    for choice in options:
        if choice.lower() == value.strip().lower():
            return choice
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(detail: str, value: object, choices: Iterable[str]) -> str:
    if isinstance(value, str):
        guess = suggest(value, choices)
        if guess is not None:
            return f'{detail} (did you mean "{guess}"?)'
    return detail


def unknown_fields(obj: Mapping[str, Any], known: tuple[str, ...], path: str) -> list[FieldError]:
    errors = []
    for key in obj:
        if key not in known:
            detail = did_you_mean(f"unknown field; allowed: {', '.join(known)}", key, known)
            errors.append(FieldError(join(path, key), detail))
    return errors


# --- limits: one wording for each kind -------------------------------------------------------
# Counts and sizes that keep a NetworkPolicy small (``Limits``) are refused the same way
# wherever they are checked, simple rules, raw rules and the override annotation alike.


def too_many(path: str, *, count: int, limit: int, noun: str) -> FieldError:
    """A list (or map) over its bound: ``<path>: must have at most 50 rules, not 51``."""
    return FieldError(path, f"must have at most {limit} {noun}, not {count}")


def too_long(path: str, *, size_bytes: int, limit_bytes: int) -> FieldError:
    """A text over its bound: ``<path>: must be at most 65536 bytes, not 70002``."""
    return FieldError(path, f"must be at most {limit_bytes} bytes, not {size_bytes}")
