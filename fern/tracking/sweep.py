"""What a sweep's pieces share: how a member finds its parent run, and how a member's failure becomes a record.

The Hydra callback (fern.tracking.sweep_callback) opens one MLflow parent run per multirun and, at the start of each
member (in the member's own process, wherever a launcher put it), sets ``PARENT_RUN_ENV`` and ``SWEEP_JOB_ENV``;
``MlflowTracker`` reads them, so a member's run is a child of the sweep without fern/app.py knowing about sweeps.

A member that calls ``sys.exit`` (run.py does, with exit code 2, on a FernError) would take the whole multirun down:
Hydra's ``run_job`` only catches ``Exception``. FERN's sweepers (hydra_plugins/fern_sweepers) therefore run each
member through ``member_task``, which turns a non-zero exit into ``MemberExit`` carrying the error's message.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

PARENT_RUN_ENV = "FERN_PARENT_RUN_ID"  # the sweep's MLflow run: members' runs nest under it
SWEEP_JOB_ENV = "FERN_SWEEP_JOB"  # the member's Hydra job number, tagged on its run as JOB_TAG
SWEEP_TAG = "fern.sweep"  # on a parent run: the sweep's name ("latest" parent = newest run with this tag)
JOB_TAG = "fern.sweep.job"
ERROR_TAG = "fern.error"
ERROR_MAX_CHARS = 4000


class MemberExit(Exception):
    """A sweep member ended with sys.exit(non-zero); the message is what the member printed as its error."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code


class _MemberTask:
    """A picklable wrapper (Ray ships it to other machines) around the Hydra task function."""

    def __init__(self, task_function: Callable[[Any], Any]) -> None:
        self.task_function = task_function
        self.__name__ = getattr(task_function, "__name__", "task")  # Hydra reads it for the job name

    def __call__(self, cfg: Any) -> Any:
        try:
            return self.task_function(cfg)
        except SystemExit as exc:
            if exc.code in (None, 0):
                return None
            cause = exc.__context__  # run.py exits inside `except FernError`: that error is the reason
            message = f"{type(cause).__name__}: {cause}" if cause is not None else f"exit code {exc.code}"
            raise MemberExit(exc.code, message) from cause


def member_task(task_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return task_function if isinstance(task_function, _MemberTask) else _MemberTask(task_function)


def describe_error(error: BaseException | None) -> str:
    """One string for a failed member's record: the message first, then where it came from."""
    if error is None:
        return "failed"
    if isinstance(error, MemberExit):
        return str(error)[:ERROR_MAX_CHARS]
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    head = f"{type(error).__name__}: {error}"
    return (head + "\n\n" + text)[:ERROR_MAX_CHARS]


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration of the block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parent_from_env() -> tuple[str | None, str | None]:
    """(parent run id, job number) when this process runs a sweep member, else (None, None)."""
    return os.environ.get(PARENT_RUN_ENV) or None, os.environ.get(SWEEP_JOB_ENV) or None


def warn(message: str) -> None:
    print(f"fern sweep: {message}", file=sys.stderr, flush=True)
