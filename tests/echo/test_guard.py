"""The self-speech guard on real recogniser output: tiny.en transcribing the agent's own (espeak) speech, whole and
in pieces as echo would arrive, versus a user's real recorded speech."""

from __future__ import annotations

from pathlib import Path

import pytest

from fern.audio import read_wav
from fern.echo import is_self_speech, self_speech_score

AGENT = ["The capital of France is Paris, a city on the river Seine.",
         "It is famous for its museums, its cafes and the Eiffel Tower."]
USER = {"tt-weasels": "Weasels have eaten our phone system",
        "conf-onlyperson": "You are currently the only person in this conference."}


@pytest.fixture(scope="module")
def agent_transcripts(speech, tiny_en):
    heard = []
    for text in AGENT:
        audio = speech(text, 16000)
        heard.append((text, tiny_en.transcribe(audio)))  # the whole clause echoed back
        n = audio.size
        for piece in (audio[n // 2:], audio[:n // 2], audio[n // 3:2 * n // 3]):  # echo caught mid-clause
            heard.append((text, tiny_en.transcribe(piece)))
    return heard


def test_agent_speech_recognised_back_is_self_speech(agent_transcripts):
    for text, transcript in agent_transcripts:
        if not transcript.strip():
            continue  # nothing recognised: nothing to guard
        assert is_self_speech(transcript, AGENT), (text, transcript, self_speech_score(transcript, AGENT))


def test_user_speech_during_playback_is_not_self_speech(tiny_en):
    for name in USER:
        transcript = tiny_en.transcribe(read_wav(Path("/usr/share/asterisk/sounds/en") / f"{name}.wav", 16000))
        assert transcript.strip()
        assert not is_self_speech(transcript, AGENT), (transcript, self_speech_score(transcript, AGENT))


def test_user_repeating_part_of_the_reply_with_new_words_is_not_self_speech():
    # "no, not Paris, I asked about Lyon": overlaps one word of the clause, mostly new words
    assert not is_self_speech("No, not Paris, I asked about Lyon.", AGENT)
    assert self_speech_score("", AGENT) == 0.0
    assert not is_self_speech("Paris", AGENT, min_words=2)
