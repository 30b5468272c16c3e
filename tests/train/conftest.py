"""Fixtures of the training tests: composed train configs, tiny real data (espeak-ng speech, chat JSONL) with bad
rows mixed in, and a runner that trains in-process with MLflow in a temporary SQLite store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from train_helpers import CHATS, SYSTEM, TEXTS, compose_train, train_run

os.environ.setdefault("OMP_NUM_THREADS", "2")

@pytest.fixture
def train_compose():
    """train_compose(overrides) -> the train config, exactly as train.py would see it."""
    from hydra.core.global_hydra import GlobalHydra

    yield compose_train
    GlobalHydra.instance().clear()


@pytest.fixture
def run_train(tmp_path):
    """run_train(overrides, name) -> summary dict; outputs in tmp_path/name, MLflow in tmp_path/mlflow.db."""
    return lambda overrides, name="run": train_run(tmp_path, name, overrides)


@pytest.fixture(scope="session")
def wav_txt_dir(tmp_path_factory) -> Path:
    """Four espeak-ng clips (22.05 kHz: resampled to 24 kHz by the reader) + their texts, and three bad rows."""
    from fern.audio import write_wav
    from fern.tts.espeak import EspeakSynthesizer

    root = tmp_path_factory.mktemp("wav_txt")
    synth = EspeakSynthesizer(words_per_minute=200)
    for i, text in enumerate(TEXTS):
        write_wav(root / f"clip{i}.wav", synth.synthesize(text), synth.sample_rate)
        (root / f"clip{i}.txt").write_text(text)
    (root / "orphan.txt").write_text("a transcript without audio")  # missing audio file
    (root / "empty.wav").write_bytes(b"")  # unreadable audio
    (root / "empty.txt").write_text("an empty file")
    (root / "blank.wav").write_bytes((root / "clip0.wav").read_bytes())
    (root / "blank.txt").write_text("   ")  # empty text
    return root


@pytest.fixture(scope="session")
def chat_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "persona.jsonl"
    lines = [json.dumps({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]}) for q, a in CHATS]
    lines.insert(2, "{not json")
    lines.append(json.dumps({"messages": [{"role": "user", "content": "No reply here"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path
