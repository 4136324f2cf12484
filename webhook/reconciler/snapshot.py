"""A ``View`` over plain lists of objects: what ``audit`` lists once, and what the tests build.

It indexes with the same functions (``sandboxes.INDEXES``) the informers are
given, so a plan computed over a snapshot is the plan the controller computes
over its caches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from webhook.api.kinds import Kind
from webhook.reconciler.sandboxes import INDEXES, name_of, namespace_of


class Snapshot:
    def __init__(self, objects: Mapping[Kind, Iterable[Mapping[str, Any]]] | None = None) -> None:
        self._objects: dict[Kind, dict[tuple[str, str], Mapping[str, Any]]] = defaultdict(dict)
        self._indexes: dict[tuple[Kind, str, str], list[Mapping[str, Any]]] = defaultdict(list)
        for kind, items in (objects or {}).items():
            for obj in items:
                self.add(kind, obj)

    def add(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        """Add ``obj``; one already there by that namespace and name is kept."""
        key = (namespace_of(obj), name_of(obj))
        if key in self._objects[kind]:
            return
        self._objects[kind][key] = obj
        for index, keys in INDEXES.get(kind, {}).items():
            for value in keys(obj):
                self._indexes[(kind, index, value)].append(obj)

    def get(self, kind: Kind, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._objects.get(kind, {}).get((namespace, name))

    def by_index(self, kind: Kind, index: str, value: str) -> list[Mapping[str, Any]]:
        return list(self._indexes.get((kind, index, value), ()))

    def items(self, kind: Kind) -> list[Mapping[str, Any]]:
        return list(self._objects.get(kind, {}).values())
