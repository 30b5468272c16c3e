"""MLflow logging: an embedded SQLite store under tracking/ by default, a team server via $MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fern.paths import PROJECT_ROOT, TRACKING_DIR

SECRET_KEY = re.compile(r"(api_?key|secret|token|password|credential)", re.IGNORECASE)
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


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the value of anything that names a secret; keys stay so a reader sees the setting existed."""
    return {k: (REDACTED if SECRET_KEY.search(k.rsplit(".", 1)[-1]) and v not in (None, "") else v)
            for k, v in params.items()}


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MlflowTracker:
    """One MLflow run per session; per-turn metrics use the turn index as the step."""

    def __init__(self, experiment: str = "fern", tracking_uri: str | None = None, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        import mlflow

        self._mlflow = mlflow
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        if mlflow.get_experiment_by_name(experiment) is None:
            # the SQLite store's default artifact root is relative to the working directory: pin it to the project
            location = (TRACKING_DIR / "artifacts").as_uri() if self.tracking_uri.startswith("sqlite") else None
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
        all_tags = {"git_sha": git_sha(), "host": socket.gethostname(), **(tags or {})}
        self.run = mlflow.start_run(run_name=run_name, tags=all_tags)
        self.run_id = self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        clean = {k: ("null" if v is None else str(v))[:500] for k, v in redact(params).items()}
        self._mlflow.log_params(clean)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v == v}  # NaN: the event did not happen
        if finite:
            self._mlflow.log_metrics(finite, step=step)

    def log_artifacts(self, directory: str | Path) -> None:
        self._mlflow.log_artifacts(str(directory))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def close(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)
