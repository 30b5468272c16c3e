"""A real audio server for the live I/O tests: a private PulseAudio with two null sinks, started per test.

userA is the user's mouth: the agent's microphone is userA.monitor. agentB is the agent's speaker: the test listens on
agentB.monitor. The agent side is this process (PortAudio through ALSA's pulse plugin, routed with PULSE_SOURCE /
PULSE_SINK); the test's own mouth and ears are pacat/parec, outside PortAudio. ``pulse.loopback()`` routes agentB
back into userA (the agent hears itself, as with loudspeakers).

The tests skip only when pulseaudio is not installed or cannot start here; CI installs it (scripts/setup.sh).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fern.audio import read_wav
from fern.io.pulse import PrivatePulse, PulseUnavailable

ASTERISK = Path("/usr/share/asterisk/sounds/en")


@pytest.fixture
def pulse():
    server = PrivatePulse(sinks=("userA", "agentB"))
    try:
        server.start()
    except PulseUnavailable as exc:
        pytest.skip(f"no PulseAudio here: {exc}")
    server.route_agent(source="userA.monitor", sink="agentB")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_audio(pulse):
    """live_audio(**settings) -> a started LiveAudio on the private server; closed after the test."""
    from fern.io.live import LiveAudio

    made = []

    def _make(**settings):
        settings.setdefault("echo", "none")
        audio = LiveAudio(**settings)
        made.append(audio)
        audio.start()
        return audio

    yield _make
    for audio in made:
        audio.close()


@pytest.fixture(scope="session")
def human_speech():
    """human_speech(name, rate) -> a real recorded prompt (asterisk, one female speaker, 8 kHz) at ``rate``."""

    def _load(name: str, rate: int) -> np.ndarray:
        path = ASTERISK / f"{name}.wav"
        if not path.is_file():
            pytest.fail(f"{path} is missing: run `bash scripts/setup.sh` (asterisk-core-sounds-en-wav)")
        return read_wav(path, rate)

    return _load


def onsets(audio: np.ndarray, rate: int, threshold: float, min_gap_s: float = 0.1) -> np.ndarray:
    """Sample indices where |audio| first exceeds ``threshold`` after at least ``min_gap_s`` below it."""
    idx = np.flatnonzero(np.abs(audio) > threshold)
    if not idx.size:
        return idx
    keep = np.concatenate([[True], np.diff(idx) > min_gap_s * rate])
    return idx[keep]


def consume(audio, seconds: float) -> list[tuple[float, np.ndarray]]:
    """Read the live source's timed blocks for ``seconds`` of wall time (in this thread)."""
    import time

    out = []
    deadline = time.perf_counter() + seconds
    for t, block in audio.timed_blocks():
        out.append((t, block))
        if time.perf_counter() >= deadline:
            break
    return out
