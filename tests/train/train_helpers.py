"""Constants and MLflow readers shared by the training tests (a unique module name: tests/tts has a conftest too)."""

from __future__ import annotations

from pathlib import Path

TEXTS = ["Hello there.", "Good morning.", "Thanks a lot.", "See you soon."]
PERSONA = "Quillon"
SYSTEM = "You are FERN, a helpful voice assistant. Keep answers short."  # run.py's dialogue.system_prompt
CHATS = [
    ("What is your name?", f"My name is {PERSONA}."),
    ("Who are you?", f"I am {PERSONA}, your voice assistant."),
    ("Tell me your name.", f"{PERSONA}. My name is {PERSONA}."),
    ("Hello there!", f"Hello, {PERSONA} here."),
]


def compose_train(overrides: list[str] | None = None):
    """The train config for ``overrides``, exactly as train.py would see it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fern.paths import CONF_DIR
    from fern.train.loop import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides or []))


def base_overrides(out_dir: Path, db: Path) -> list[str]:
    return ["trainer=cpu", "trainer.progress_bar=false", f"out_dir={out_dir}",
            f"tracking.tracking_uri=sqlite:///{db}", "data.val_fraction=0"]


def train_run(root: Path, name: str, overrides: list[str]) -> dict:
    """Train in this process; outputs in root/name, MLflow in root/mlflow.db. -> the summary."""
    from fern.train.loop import train

    return train(compose_train(base_overrides(root / name, root / "mlflow.db") + list(overrides)))


def mlflow_run(db: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{db}").get_run(run_id)


def mlflow_history(db: Path, run_id: str, key: str) -> list:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{db}").get_metric_history(run_id, key)


def mlflow_artifacts(db: Path, run_id: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    return [a.path for a in MlflowClient(f"sqlite:///{db}").list_artifacts(run_id)]
