"""Helpers for the sweep tests: run a real multirun in a subprocess, read what it left in MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fern.paths import PROJECT_ROOT

# small and quick members
SHORT = ["llm.max_new_tokens=12", "round_trip_eval=false"]


def env(**extra: str) -> dict[str, str]:
    """The subprocess environment: offline, this checkout first on the path (Ray workers inherit it too)."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **extra}


def run(args: list[str], timeout: int = 900, module: str | None = None, **extra_env: str):
    entry = ["-m", module] if module else [str(PROJECT_ROOT / "run.py")]
    return subprocess.run([sys.executable, *entry, *args], capture_output=True, text=True, timeout=timeout, cwd="/",
                          env=env(**extra_env))


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def parents_and_children(uri: str, experiment: str = "fern"):
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, "nothing was logged"
    parents = c.search_runs([exp.experiment_id], "tags.`fern.sweep` IS NOT NULL")
    children = {p.info.run_id: c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'")
                for p in parents}
    return parents, children


def one_question_wav(path: Path) -> Path:
    from fern.audio import write_wav
    from fern.tts.espeak import speak_conversation

    return write_wav(path, speak_conversation(["What is the capital of France?"], gap_s=1.0), 16000)
