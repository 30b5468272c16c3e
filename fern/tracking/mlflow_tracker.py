"""MLflow logging: an embedded SQLite store under tracking/ by default, a team server via $MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fern.paths import PROJECT_ROOT, TRACKING_DIR  # noqa: F401  (TRACKING_DIR: the default store)

# "token" only as a whole trailing word (hf_token, access_token): max_new_tokens, history_max_tokens and tokenizer
# are settings, and hiding them made sweeps over them unreadable
SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|credential|(^|_)token$)", re.IGNORECASE)
REDACTED = "***"


def default_tracking_uri() -> str:
    return f"sqlite:///{TRACKING_DIR / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def strip_credentials(value: Any) -> Any:
    """``https://user:token@host/...`` -> ``https://***@host/...``: URIs may carry secrets in their user part."""
    return URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", value) if isinstance(value, str) else value


def redact_value(key: str, value: Any) -> Any:
    if SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, ""):
        return REDACTED
    return strip_credentials(value)


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the value of anything that names a secret (keys stay, so a reader sees the setting existed), and the
    credentials part of any URI."""
    return {k: redact_value(k, v) for k, v in params.items()}


def redact_tree(tree: Any, key: str = "") -> Any:
    """``redact`` for a nested config (what gets written to config.yaml)."""
    if isinstance(tree, Mapping):
        return {k: redact_tree(v, f"{key}.{k}" if key else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact_tree(v, key) for v in tree]
    return redact_value(key, tree)


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(tracking_uri: str, experiment: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite database, not under the working directory)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        # the SQLite store's default artifact root is relative to the working directory: keep artifacts
        # beside the database instead (tracking/artifacts for the default store)
        location = (db.parent / "artifacts").resolve().as_uri()
    return client.create_experiment(experiment, artifact_location=location)


class MlflowTracker:
    """One MLflow run per session; per-turn metrics use the turn index as the step.

    Inside a sweep member (fern.tracking.sweep sets $FERN_PARENT_RUN_ID) the run is a child of the sweep's run.
    """

    def __init__(self, experiment: str = "fern", tracking_uri: str | None = None, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        import mlflow

        from fern.errors import ServiceError

        self._mlflow = mlflow
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.display_uri = strip_credentials(self.tracking_uri)
        from fern.tracking.sweep import JOB_TAG, parent_from_env

        parent_run_id, job = parent_from_env()
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            ensure_experiment(self.tracking_uri, experiment)
            mlflow.set_experiment(experiment)
            all_tags = {"git_sha": git_sha(), "host": socket.gethostname(), **(tags or {})}
            if job is not None:
                all_tags[JOB_TAG] = job
            self.run = mlflow.start_run(run_name=run_name, tags=all_tags, parent_run_id=parent_run_id)
        except Exception as exc:
            raise ServiceError(f"MLflow tracking at {self.display_uri} is unusable ({type(exc).__name__}: "
                               f"{strip_credentials(str(exc))[:300]}); fix MLFLOW_TRACKING_URI / tracking.tracking_uri "
                               f"or run with tracking.enabled=false") from exc
        self.run_id = self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        clean = {k: ("null" if v is None else str(v))[:500] for k, v in redact(params).items()}
        self._mlflow.log_params(clean)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v == v}  # NaN: the event did not happen
        if finite:
            self._mlflow.log_metrics(finite, step=step)

    def log_files(self, files: list[Path]) -> None:
        """Log the named files (never a whole directory: an output dir may hold anything, .env files included)."""
        for path in files:
            if Path(path).is_file():
                self._mlflow.log_artifact(str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def close(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


@contextmanager
def bench_run(bench: str, run_name: str) -> Iterator[MlflowTracker]:
    """The MLflow run of ``python -m fern.bench.<bench>`` (experiment ``fern-bench-<bench>``), closed whatever
    happens inside; then says where it went."""
    tracker = MlflowTracker(experiment=f"fern-bench-{bench}", run_name=run_name, tags={"bench": bench})
    try:
        yield tracker
    finally:
        tracker.close()
    print(f"logged to MLflow run {tracker.run_id} ({tracker.display_uri})")
