"""Turn-taking end to end through run.py on real human speech with mid-sentence pauses: turn=semantic keeps each
utterance whole (and never lets a reply prepared during the pause reach the speaker early); turn=silence cuts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fern.audio import read_wav, write_wav
from fern.paths import PROJECT_ROOT
from fern.quality import word_error_rate

from .conftest import cut_index, with_silence

pytestmark = pytest.mark.models

SAID = {"conf-getconfno": "Please enter your conference number followed by the pound key.",
        "vm-reenterpassword": "Please re-enter your password followed by the pound key."}
PAUSE_S, GAP_S = 1.2, 6.0


@pytest.fixture(scope="module")
def paused_conversation(tmp_path_factory, prompt):
    parts: list = [0.5]
    spans = []  # (start, end) of each utterance in the replay, pause included
    t = 0.5
    for name in SAID:
        audio = prompt(name)
        cut = cut_index(audio, name)
        parts += [audio[:cut], PAUSE_S, audio[cut:], GAP_S]
        spans.append((t, t + audio.size / 16000 + PAUSE_S))
        t = spans[-1][1] + GAP_S
    wav = write_wav(tmp_path_factory.mktemp("paused") / "paused.wav", with_silence(*parts), 16000)
    return wav, spans


def replay(tmp_path, wav, *overrides: str) -> dict:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), f"io.input={wav}", f"io.output_dir={out}",
         f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "llm.max_new_tokens=8", *overrides],
        capture_output=True, text=True, timeout=600, cwd="/", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return {"turns": json.loads((out / "transcript.json").read_text())["turns"], "log": result.stdout + result.stderr,
            "timeline": read_wav(out / "timeline.wav", 16000), "out": out}


def test_semantic_keeps_each_paused_utterance_whole(tmp_path, paused_conversation):
    wav, spans = paused_conversation
    run = replay(tmp_path, wav, "turn=semantic", "vad=silero")
    turns = run["turns"]
    assert len(turns) == len(SAID), [t["user_text"] for t in turns]
    for turn, said, (_, end) in zip(turns, SAID.values(), spans):
        assert word_error_rate(said, turn["user_text"]) <= 0.35, turn["user_text"]  # built from the whole utterance
        assert turn["agent_text"].strip()  # one reply each
        # nothing the agent prepared during the pause was heard before the user had finished
        assert turn["times"]["t_first_agent_sample"] > end - 0.3, (turn["times"], end)


def test_silence_cuts_a_paused_utterance_in_two(tmp_path, paused_conversation):
    wav, _ = paused_conversation
    turns = replay(tmp_path, wav, "turn=silence")["turns"]
    assert len(turns) > len(SAID), [t["user_text"] for t in turns]  # the 1.2 s pause outlasts its 700 ms
    assert np.isfinite([t["metrics"]["endpoint_delay_ms"] for t in turns]).all()
