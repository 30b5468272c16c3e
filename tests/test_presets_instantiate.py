"""Every preset instantiates where its model is on this machine, and otherwise fails with an error that names what
is missing and how to get it (this machine has no hub access and no API keys)."""

from __future__ import annotations

import pytest

from fern.app import build
from fern.errors import MissingSecretError, MissingWeightsError
from fern.protocols import Chunker, LanguageModel, SpeechRecognizer, SpeechSynthesizer, TurnDetector, \
    VoiceActivityDetector

RUNS_HERE = [
    ("vad", "webrtc", VoiceActivityDetector),
    ("turn", "silence", TurnDetector),
    ("chunker", "clause", Chunker),
    ("tts", "espeak", SpeechSynthesizer),
    ("asr", "whisper_tiny_en_offline", SpeechRecognizer),
]

NEEDS_HUB = [
    ("asr", "whisper_large_v3_turbo", "mobiuslabsgmbh/faster-whisper-large-v3-turbo"),
    ("asr", "whisper_int8", "mobiuslabsgmbh/faster-whisper-large-v3-turbo"),
    ("asr", "whisper_fp16", "mobiuslabsgmbh/faster-whisper-large-v3-turbo"),
    ("asr", "whisper_base", "Systran/faster-whisper-base.en"),
    ("llm", "llama3_2_1b", "meta-llama/Llama-3.2-1B-Instruct"),
    ("llm", "smollm2_1_7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct"),
    ("tts", "csm_streaming", "sesame/csm-1b"),
    ("tts", "csm", "sesame/csm-1b"),
]


@pytest.mark.parametrize("group,preset,protocol", RUNS_HERE)
def test_preset_builds_and_satisfies_its_protocol(compose, group, preset, protocol):
    stage = build(compose([f"{group}={preset}", "device=cpu"])[group], group)
    assert isinstance(stage, protocol)


def test_offline_llm_preset_builds_and_streams(compose):
    from fern.events import CancelToken

    llm = build(compose(["llm=smollm2_offline", "device=cpu", "llm.max_new_tokens=8"]).llm, "llm")
    assert isinstance(llm, LanguageModel)
    text = "".join(llm.stream([{"role": "user", "content": "What is the capital of France?"}], CancelToken()))
    assert "Paris" in text


@pytest.mark.parametrize("group,preset,repo", NEEDS_HUB)
def test_hub_preset_without_weights_names_the_repo(compose, group, preset, repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as info:
        build(compose([f"{group}={preset}", "device=cpu"])[group], group)
    assert repo in str(info.value)


def test_gemini_without_key_names_the_variables(compose, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(MissingSecretError, match="GOOGLE_API_KEY|GEMINI_API_KEY"):
        build(compose(["llm=gemini", "device=cpu"]).llm, "llm")
