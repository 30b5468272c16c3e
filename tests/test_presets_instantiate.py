"""Every preset instantiates where its model is on this machine, and otherwise fails with an error that names what
is missing and how to get it (this machine has no hub access and no API keys)."""

from __future__ import annotations

import pytest

from fern.app import build
from fern.errors import MissingSecretError, MissingWeightsError
from fern.paths import CONF_DIR
from fern.protocols import (
    Chunker,
    LanguageModel,
    SpeechRecognizer,
    SpeechSynthesizer,
    TurnDetector,
    VoiceActivityDetector,
)

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)

PROTOCOLS = {"vad": VoiceActivityDetector, "turn": TurnDetector, "chunker": Chunker, "tts": SpeechSynthesizer,
             "asr": SpeechRecognizer, "llm": LanguageModel}
# Presets whose model is not on this machine: their error must name what to fetch. Anything else must build here.
HUB_PRESETS = {("asr", "whisper_large_v3_turbo"), ("asr", "whisper_int8"), ("asr", "whisper_fp16"),
               ("asr", "whisper_base"), ("asr", "hf_whisper_turbo"), ("llm", "llama3_2_1b"), ("llm", "smollm2_1_7b"),
               ("tts", "csm_streaming"), ("tts", "csm")}
SECRET_PRESETS = {("llm", "gemini")}
PRESETS = [(group, p.stem) for group in PROTOCOLS for p in sorted((CONF_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize("group,preset", [gp for gp in PRESETS if gp not in HUB_PRESETS | SECRET_PRESETS])
def test_preset_builds_and_satisfies_its_protocol(compose, group, preset):
    """Every preset found in conf/ (a new backend needs no entry here) builds on this machine."""
    stage = build(compose([f"{group}={preset}", "device=cpu"])[group], group)
    assert isinstance(stage, PROTOCOLS[group])


def test_offline_llm_preset_builds_and_streams(compose):
    from fern.events import CancelToken

    llm = build(compose(["llm=smollm2_offline", "device=cpu", "llm.max_new_tokens=8"]).llm, "llm")
    assert isinstance(llm, LanguageModel)
    text = "".join(llm.stream([{"role": "user", "content": "What is the capital of France?"}], CancelToken()))
    assert "Paris" in text


@pytest.mark.parametrize("group,preset", sorted(HUB_PRESETS))
def test_hub_preset_without_weights_names_the_repo(compose, group, preset, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose([f"{group}={preset}", "device=cpu"])
    with pytest.raises(MissingWeightsError) as info:
        build(cfg[group], group)
    assert str(cfg[group].model) in str(info.value) and "download" in str(info.value)


def test_gemini_without_key_names_the_variables(compose, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(MissingSecretError, match="GOOGLE_API_KEY|GEMINI_API_KEY"):
        build(compose(["llm=gemini", "device=cpu"]).llm, "llm")
