"""Real turn-taking models and real human speech (the asterisk prompts, 8 kHz, read at 16 kHz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fern.bench.turn_data import MID_SENTENCE_CUTS as CUTS
from fern.bench.turn_data import cut_between_words
from fern.paths import models_dir

ASTERISK = Path("/usr/share/asterisk/sounds/en")
SMART_TURN = models_dir() / "smart_turn" / "smart-turn-v3.2-cpu.onnx"
SILERO = models_dir() / "silero_vad" / "silero_vad.onnx"


def cut_index(audio: np.ndarray, name: str) -> int:
    """Sample index of the CUTS boundary (fern.bench.turn_data.MID_SENTENCE_CUTS) of prompt ``name``."""
    return cut_between_words(audio, *CUTS[name])


@pytest.fixture(scope="session")
def prompt():
    """prompt(name) -> the asterisk prompt as float32 at 16 kHz."""
    from fern.audio import read_wav

    if not ASTERISK.is_dir():
        pytest.fail(f"{ASTERISK} is missing: run `bash scripts/setup.sh`")

    def _read(name: str) -> np.ndarray:
        return read_wav(ASTERISK / f"{name}.wav", 16000)

    return _read


@pytest.fixture(scope="session")
def cut_prompt(prompt):
    """cut_prompt(name) -> the prompt up to its CUTS boundary."""

    def _cut(name: str) -> np.ndarray:
        audio = prompt(name)
        return audio[:cut_index(audio, name)]

    return _cut


def with_silence(*parts: np.ndarray | float, noise: float = 3e-4, seed: int = 0) -> np.ndarray:
    """Concatenate audio arrays and silences (a float = seconds), with a low noise floor throughout."""
    pieces = [np.zeros(int(p * 16000), np.float32) if isinstance(p, float) else p for p in parts]
    audio = np.concatenate(pieces)
    return (audio + np.random.default_rng(seed).normal(0, noise, audio.size)).astype(np.float32)


@pytest.fixture(scope="session")
def smart_turn_model():
    from fern.turn.smart_turn import SmartTurnModel

    if not SMART_TURN.is_file():
        pytest.fail(f"{SMART_TURN} is missing: run `bash scripts/setup.sh`")
    return SmartTurnModel(str(SMART_TURN))


@pytest.fixture(scope="session")
def text_model(smollm2):
    """P(<|im_end|>) on the suite's one SmolLM2-135M (shared weights: loading it costs seconds)."""
    from fern.turn.text_eot import TextEndOfTurnModel

    return TextEndOfTurnModel.from_loaded(smollm2.model, smollm2.tokenizer)
