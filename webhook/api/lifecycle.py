"""What a part with a lifetime offers the manager (``webhook.runtime.manager``).

Types only: the webhook server, the caches and the periodic tasks implement them in
their own layers; the manager, above them all, starts and stops them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

OnFailure = Callable[[str], None]


class StartError(Exception):
    """A part could not start; the message says why, in one line."""


class Runnable(Protocol):
    """A part with a lifetime. ``start`` returns once the part runs (or raises StartError);
    a part that stops on its own later calls ``on_failure`` with why. ``stop`` returns once
    the part has stopped; it is safe to call on a part that never started, to call twice,
    and to call while ``start`` waits (which then gives up)."""

    name: str

    def start(self, on_failure: OnFailure) -> None: ...

    def stop(self) -> None: ...
