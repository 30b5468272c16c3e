"""NearEndGate with the real AEC3 canceller: the raw microphone passes where the echo is negligible (so the
double-talk suppressor cannot eat the user's onset), never where the echo is loud."""

from __future__ import annotations

import numpy as np

from fern.echo import make_echo_canceller
from fern.echo.gate import NearEndGate

RATE, BLOCK = 16000, 320


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


def test_no_echo_lets_the_user_through_untouched():
    far = _far(4.0)
    mic = np.zeros_like(far)  # a headset: the speaker does not reach the microphone
    user = 0.05 * np.sin(2 * np.pi * 180 * np.arange(RATE) / RATE).astype(np.float32)
    mic[2 * RATE:3 * RATE] = user  # the user talks over the agent from 2 s
    raw, gate = _run(mic, far)
    blocks = slice(2 * RATE // BLOCK, 3 * RATE // BLOCK)
    assert all(raw[blocks]), raw[blocks]  # every block of the user's speech is the microphone itself
    assert gate.echo_return_loss < 1e-6


def test_a_loud_echo_is_never_let_through():
    far = _far(6.0)
    mic = np.concatenate([np.zeros(320, np.float32), far[:-320]])  # the speaker at unity gain, 20 ms later
    raw, gate = _run(mic, far)
    assert not any(raw)  # the canceller's output every time, from the first block on
    assert 0.3 < gate.echo_return_loss < 3.0  # the echo path's loss is learnt: about 0 dB
