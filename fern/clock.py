"""One monotonic clock for every event of a session.

All timestamps are seconds since the session started, so latencies between stages (and, later, barge-in decisions)
are plain subtractions, whatever thread produced the event.
"""

from __future__ import annotations

import time


class SessionClock:
    def __init__(self) -> None:
        self._origin = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._origin

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)
