"""A kind's objects in memory, kept current by list + watch: client-go's reflector,
store and shared informer in one small piece.

The first list (paged with limit/continue) fills the store, then a watch from the list's
resourceVersion follows every change. The watch ends now and then (the server's timeout, a
dropped connection) and resumes from the last resourceVersion seen, bookmarks included;
when the server answers 410 Gone (that version was compacted away) the informer lists
again. API and connection errors back off exponentially. ``stop()`` shuts the open watch
down under its reader and returns at once.

Only what ``slim`` keeps of an object is stored: memory stays flat with the number of
objects, not their size. Handlers hear about every change as ``(old, new)``: ``(None,
new)`` an add, ``(old, new)`` an update, ``(old, None)`` a delete. A relist tells them the
adds, updates and deletes that turn the old store into the new list (client-go's
``Replace``), so a delete that happened while no watch was open is never missed. An update
that changes nothing ``slim`` keeps is not passed on: what the handlers could read is
exactly what is stored, so there is nothing for them to do.

``Store`` is the pure part (plain dicts in, deltas out); ``Informer`` the thread around it.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from webhook.api.kinds import Kind
from webhook.kube import errors
from webhook.kube.rest import WATCH_TIMEOUT_SECONDS, Rest, Watch

logger = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
BACKOFF_JITTER = 0.2  # up to 20% more, so replicas restarted together do not retry together
PAGE_SIZE = 500  # client-go's default page size for a reflector's list
STOP_JOIN_SECONDS = 5.0

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
Slim = Callable[[Mapping[str, Any]], dict[str, Any]]
IndexKeys = Callable[[dict[str, Any]], Iterable[str]]
Delta = tuple[dict[str, Any] | None, dict[str, Any] | None]
Handler = Callable[[dict[str, Any] | None, dict[str, Any] | None], None]


def object_key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return sys.intern(str(metadata.get("namespace") or "")), str(metadata.get("name") or "")


def interned(value: Any) -> Any:
    """``value`` with every string in it interned: label keys and values, namespaces and
    template names repeat across thousands of objects, and one copy of each is enough.
    For ``slim`` functions to call on what they keep."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): interned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [interned(v) for v in value]
    return value


class Store:
    """Slim objects by (namespace, name), secondary indexes, and the resourceVersion they
    are current at. Writes come from one thread (the informer's); reads from any."""

    def __init__(self, slim: Slim) -> None:
        self.slim = slim
        self.resource_version = ""
        self._objects: dict[Key, dict[str, Any]] = {}
        self._indexers: dict[str, IndexKeys] = {}
        self._indices: dict[str, dict[str, set[Key]]] = {}
        self._lock = threading.Lock()

    def add_index(self, index: str, keys: IndexKeys) -> None:
        with self._lock:
            if index in self._indexers:
                raise ValueError(f"index {index!r} exists")
            self._indexers[index] = keys
            entries: dict[str, set[Key]] = {}
            for key, obj in self._objects.items():
                for value in keys(obj):
                    entries.setdefault(value, set()).add(key)
            self._indices[index] = entries

    # Reads.

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get((namespace, name))

    def by_index(self, index: str, value: str) -> list[dict[str, Any]]:
        with self._lock:
            keys = self._indices[index].get(value, ())
            return [self._objects[key] for key in keys]

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    # Writes.

    def replace(self, items: Iterable[Mapping[str, Any]], resource_version: str) -> list[Delta]:
        """A fresh list: the deltas that turn what was stored into it."""
        return self.replace_slimmed(
            ((object_key(i), self.slim(i)) for i in items), resource_version
        )

    def replace_slimmed(
        self, objects: Iterable[tuple[Key, dict[str, Any]]], resource_version: str
    ) -> list[Delta]:
        fresh = dict(objects)
        deltas: list[Delta] = []
        with self._lock:
            for key, new in fresh.items():
                old = self._objects.get(key)
                if old is None:
                    deltas.append((None, new))
                elif old != new:
                    deltas.append((old, new))
                else:
                    fresh[key] = old  # keep the object handlers already hold
            deltas.extend((old, None) for key, old in self._objects.items() if key not in fresh)
            self._objects = fresh
            self._indices = {
                index: self._build_index(keys, fresh) for index, keys in self._indexers.items()
            }
            self.resource_version = resource_version
        return deltas

    def apply(self, event: Mapping[str, Any]) -> Delta | None:
        """One watch event (ADDED, MODIFIED, DELETED, BOOKMARK); the delta it makes, if any.
        ERROR events are raised by the watch before they get here."""
        event_type = event.get("type")
        obj = event.get("object") or {}
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        delta: Delta | None = None
        with self._lock:
            if event_type in ("ADDED", "MODIFIED"):
                key = object_key(obj)
                new = self.slim(obj)
                old = self._objects.get(key)
                if old != new:
                    self._objects[key] = new
                    self._reindex(key, old, new)
                    delta = (old, new)
            elif event_type == "DELETED":
                key = object_key(obj)
                old = self._objects.pop(key, None)
                if old is not None:
                    self._reindex(key, old, None)
                # Not stored (it cannot happen in an unbroken stream): still a delete.
                delta = (old if old is not None else self.slim(obj), None)
            elif event_type != "BOOKMARK":
                logger.debug("ignoring watch event of type %s", event_type)
                return None
            if version:
                self.resource_version = version
        return delta

    def _reindex(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for index, keys in self._indexers.items():
            entries = self._indices[index]
            for value in keys(old) if old is not None else ():
                bucket = entries.get(value)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del entries[value]
            for value in keys(new) if new is not None else ():
                entries.setdefault(value, set()).add(key)

    @staticmethod
    def _build_index(keys: IndexKeys, objects: Mapping[Key, dict[str, Any]]) -> dict[str, set[Key]]:
        entries: dict[str, set[Key]] = {}
        for key, obj in objects.items():
            for value in keys(obj):
                entries.setdefault(value, set()).add(key)
        return entries


class Informer:
    """One kind (optionally one label selector) listed and watched into a ``Store``."""

    def __init__(
        self,
        rest: Rest,
        kind: Kind,
        *,
        slim: Slim,
        label_selector: str = "",
        name: str = "",
        namespace: str | None = None,
        page_size: int | None = PAGE_SIZE,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        self.kind = kind
        self.name = name or kind.plural
        self.label_selector = label_selector
        self.namespace = namespace
        self._rest = rest
        self._store = Store(slim)
        self._handlers: list[Handler] = []
        self._page_size = page_size
        self._watch_timeout_seconds = watch_timeout_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None
        self._watch_lock = threading.Lock()

    # Setup, before start().

    def add_index(self, index: str, keys: IndexKeys) -> None:
        self._store.add_index(index, keys)

    def add_handler(self, handler: Handler) -> None:
        """``handler(old, new)`` is called on the informer's thread, one change at a time,
        after the store has it. It must be quick (queue a key) and must not change the
        objects it is given: they are the stored ones. An exception is logged, not fatal."""
        if self._thread is not None:
            raise RuntimeError("add handlers before start(): they would miss the first list")
        self._handlers.append(handler)

    # Reads, from any thread.

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._store.get(namespace, name)

    def by_index(self, index: str, value: str) -> list[dict[str, Any]]:
        return self._store.by_index(index, value)

    def items(self) -> list[dict[str, Any]]:
        """Every stored object (the stored dicts themselves: read, never change them)."""
        return self._store.items()

    def __len__(self) -> int:
        return len(self._store)

    @property
    def resource_version(self) -> str:
        return self._store.resource_version

    @property
    def synced(self) -> bool:
        """The first list has landed and its adds have been handled."""
        return self._synced.is_set()

    def wait_synced(self, timeout_seconds: float) -> bool:
        return self._synced.wait(timeout_seconds)

    # Lifecycle.

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"informer {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_JOIN_SECONDS)

    @property
    def watching(self) -> bool:
        """A watch is open: the store follows the server's changes as they come."""
        return self._watch is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        backoff = self._backoff_initial
        relist = True
        while not self._stopping.is_set():
            try:
                if relist:
                    self._list()
                    relist = False
                    if self._stopping.is_set():
                        break
                self._follow()
                backoff = self._backoff_initial  # ended by the server: resume at once
            except errors.Gone as exc:
                logger.info("%s: watch expired (%s); relisting", self.name, exc.message)
                relist = True
            except Exception as exc:
                if self._stopping.is_set():
                    break
                delay = backoff * (1 + BACKOFF_JITTER * random.random())
                logger.warning(
                    "%s: list/watch failed: %s; retrying in %.1fs", self.name, exc, delay
                )
                self._stopping.wait(delay)
                backoff = min(backoff * 2, self._backoff_max)
                # A broken watch resumes from the last version (relist is still set if it
                # was the list that failed); the server says 410 when it cannot.

    def _list(self) -> None:
        objects: list[tuple[Key, dict[str, Any]]] = []
        continue_: str | None = None
        limit = self._page_size
        while True:
            try:
                page = self._rest.list(
                    self.kind,
                    namespace=self.namespace,
                    label_selector=self.label_selector,
                    limit=limit,
                    continue_=continue_,
                )
            except errors.Gone:
                if continue_ is None:
                    raise
                # The continue token outlived its snapshot: list again, in one piece.
                logger.info("%s: list continuation expired; listing without pages", self.name)
                objects, continue_, limit = [], None, None
                continue
            slim = self._store.slim
            objects.extend((object_key(item), slim(item)) for item in page.get("items") or ())
            metadata = page.get("metadata") or {}
            continue_ = metadata.get("continue") or None
            if continue_ is None:
                version = str(metadata.get("resourceVersion") or "")
                break
            if self._stopping.is_set():
                return
        deltas = self._store.replace_slimmed(objects, version)
        logger.info(
            "%s: listed %d at resourceVersion %s (%d changes)",
            self.name,
            len(self._store),
            version,
            len(deltas),
        )
        self._dispatch(deltas)
        self._synced.set()

    def _follow(self) -> None:
        watch = self._rest.watch(
            self.kind,
            namespace=self.namespace,
            resource_version=self._store.resource_version,
            label_selector=self.label_selector,
            timeout_seconds=self._watch_timeout_seconds,
        )
        with self._watch_lock:
            self._watch = watch
        if self._stopping.is_set():
            watch.close()
        try:
            with watch as events:
                for event in events:
                    delta = self._store.apply(event)
                    if delta is not None:
                        self._dispatch((delta,))
        finally:
            with self._watch_lock:
                self._watch = None

    def _dispatch(self, deltas: Iterable[Delta]) -> None:
        for old, new in deltas:
            for handler in self._handlers:
                try:
                    handler(old, new)
                except Exception:
                    logger.exception("%s: event handler failed", self.name)
