"""One log line per completed turn: what was said and how long the agent took to answer."""

from __future__ import annotations

import logging

from fern.observers.record import TurnCompleted

log = logging.getLogger("fern")


class ConsoleObserver:
    def on_event(self, event: object) -> None:
        if isinstance(event, TurnCompleted):
            rec = event.record
            log.info("turn %d | user: %s | agent: %s | v2v %.0f ms%s", rec.turn_id, rec.user_text, rec.agent_text,
                     rec.metrics()["voice_to_voice_ms"], f" | {rec.error}" if rec.error else "")

    def close(self) -> None:
        pass
