"""NearEndGate with the real AEC3 canceller: the raw microphone passes where the echo is negligible (so the
double-talk suppressor cannot eat the user's onset), never where the echo is loud."""

from __future__ import annotations

import numpy as np
import pytest

from fern.audio import read_wav
from fern.echo import make_echo_canceller
from fern.echo.gate import NearEndGate
from fern.errors import ConfigValueError

RATE, BLOCK = 16000, 320


@pytest.fixture
def human_speech():
    from tests.live.conftest import ASTERISK

    def _load(name: str) -> np.ndarray:
        path = ASTERISK / f"{name}.wav"
        if not path.is_file():
            pytest.fail(f"{path} is missing: run `bash scripts/setup.sh` (asterisk-core-sounds-en-wav)")
        return read_wav(path, RATE)

    return _load


def _far(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like far end: noise bursts (syllables) of varying loudness."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 0.08
    envelope = 0.3 + 0.7 * (np.sin(np.arange(x.size) / RATE * 2 * np.pi * 4) > 0)
    return (x * envelope).astype(np.float32)


def _run(mic: np.ndarray, far: np.ndarray) -> tuple[list[bool], NearEndGate]:
    aec, gate, raw = make_echo_canceller("aec", RATE), NearEndGate(RATE, 20), []
    for i in range(0, mic.size - BLOCK + 1, BLOCK):
        x, r = mic[i:i + BLOCK], far[i:i + BLOCK]
        out = gate.choose(x, r, aec.process(x, r))
        raw.append(out is not None and np.array_equal(out, x) and np.any(x))
    return raw, gate


def test_no_echo_lets_the_user_through_untouched(human_speech):
    far = _far(5.0)
    mic = np.zeros_like(far)  # a headset: the speaker does not reach the microphone
    user = human_speech("tt-weasels")  # real speech, 2 s
    mic[2 * RATE:2 * RATE + user.size] = user  # the user talks over the agent from 2 s
    raw, _ = _run(mic, far)
    voiced = [i for i in range(2 * RATE // BLOCK, (2 * RATE + user.size) // BLOCK)
              if np.sqrt(np.mean(mic[i * BLOCK:(i + 1) * BLOCK] ** 2)) > 0.01]
    first = voiced[:10]  # the onset, which AEC3 alone attenuates
    assert all(raw[i] for i in first), [raw[i] for i in first]  # the microphone itself, untouched
    # later blocks where AEC3 goes on suppressing count as echo and raise the loss estimate: the gate is for onsets
    assert sum(raw[i] for i in voiced) >= 0.7 * len(voiced)
    assert _run(mic[:2 * RATE], far[:2 * RATE])[1].echo_return_loss < 1e-6  # before the user: no echo path at all


def test_a_loud_echo_is_never_let_through():
    far = _far(6.0)
    mic = np.concatenate([np.zeros(320, np.float32), far[:-320]])  # the speaker at unity gain, 20 ms later
    raw, gate = _run(mic, far)
    assert not any(raw)  # the canceller's output every time, from the first block on
    assert 0.3 < gate.echo_return_loss < 3.0  # the echo path's loss is learnt: about 0 dB


def test_speexdsp_is_measured_not_offered():
    with pytest.raises(ConfigValueError, match="not offered.*io.echo=aec"):
        make_echo_canceller("speex", RATE)
