"""Blocking generators (models) driven from worker threads, items handed to whoever waits for them.

Stages are plain synchronous generators (easy to test and benchmark); the pipeline runs them in threads and consumes
them from asyncio, and Gemini consumes its HTTP stream with deadlines. Both go through ``pump``, the one loop that
iterates in a thread, forwards each item, keeps the generator's return value and reports failures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fern.clock import SessionClock
from fern.events import CancelToken

T = TypeVar("T")


@dataclass(frozen=True)
class Finished:
    """The generator ran out; ``value`` is what it returned (e.g. an LLM's StreamInfo)."""

    value: Any = None


@dataclass(frozen=True)
class Failed:
    exc: BaseException


def pump(items: Iterator[T] | Generator[T, Any, Any], deliver: Callable[[Any], None],
         stop: Callable[[], bool]) -> None:
    """Iterate ``items`` (in the calling thread), delivering each item, then exactly one Finished or Failed.

    ``stop`` is checked after each item: a consumer that has gone away ends the loop at the next step. The generator
    is closed in any case, so it releases what it holds (espeak-ng's process, a model's cache) right away."""
    outcome: Finished | Failed = Finished()
    try:
        while True:
            try:
                item = next(items)
            except StopIteration as end:
                outcome = Finished(end.value)
                break
            deliver(item)
            if stop():
                break
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        outcome = Failed(exc)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
        deliver(outcome)


def drain(items: Generator[T, Any, Any]) -> tuple[list[T], Any]:
    """Run a generator to its end in this thread: (its items, its return value)."""
    out: list[T] = []
    while True:
        try:
            out.append(next(items))
        except StopIteration as end:
            return out, end.value


class ThreadStream(Generic[T]):
    """An async view of a blocking generator running in ``executor``: ``async with aclosing(stream.items()) as it:
    async for t, item in it`` yields items stamped with the session time they were made; ``result`` is the
    generator's return value once it finished.

    Leaving the loop early (cancellation, an error downstream) cancels the token and waits for the worker to stop
    (one step at most), so no stale worker still drives a model when the next reply starts."""

    def __init__(self, make_iter: Callable[[], Iterator[T]], cancel: CancelToken, executor: Executor,
                 clock: SessionClock) -> None:
        self._make_iter, self._cancel, self._executor, self._clock = make_iter, cancel, executor, clock
        self.result: Any = None

    async def items(self) -> AsyncIterator[tuple[float, T]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel, clock = self._cancel, self._clock

        def deliver(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (clock.now(), item))
            except RuntimeError:  # the loop is closed: the session is over
                pass

        def work() -> None:
            pump(self._make_iter(), deliver, lambda: cancel.cancelled)

        worker = loop.run_in_executor(self._executor, work)
        finished = False
        try:
            while True:
                t, item = await queue.get()
                if isinstance(item, Finished):
                    finished = True
                    self.result = item.value
                    return
                if isinstance(item, Failed):
                    finished = True
                    raise item.exc
                yield t, item
        finally:
            if not finished:
                cancel.cancel()
                try:
                    await asyncio.shield(worker)
                except asyncio.CancelledError:
                    pass
