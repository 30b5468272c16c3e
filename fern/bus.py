"""The event bus: stages emit, observers (record, console, outputs, MLflow) see every event in order.

Delivery is synchronous on the event loop and re-entrant (an observer may emit, e.g. the recorder's TurnCompleted):
events emitted while one is being delivered queue behind it, so every observer sees the same order. An observer that
fails is logged and skipped; it never ends the conversation.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

from fern.events import Event
from fern.protocols import Observer

log = logging.getLogger(__name__)


class EventBus:
    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)
        self._pending: deque[Event] = deque()
        self._delivering = False

    def emit(self, event: Event) -> None:
        self._pending.append(event)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._pending:
                current = self._pending.popleft()
                for observer in self.observers:
                    try:
                        observer.on_event(current)
                    except Exception:  # noqa: BLE001 - a broken observer must not end the session
                        log.exception("observer %s failed on %s", type(observer).__name__, type(current).__name__)
        finally:
            self._delivering = False

    def close(self) -> None:
        """End of session: each observer writes out what it keeps, in order, whatever the others do; the first
        failure is raised after all have had their turn (a disk that is full must not pass silently)."""
        first: Exception | None = None
        for observer in self.observers:
            try:
                observer.close()
            except Exception as exc:  # noqa: BLE001
                log.error("observer %s failed to close: %s", type(observer).__name__, exc)
                first = first or exc
        if first is not None:
            raise first
