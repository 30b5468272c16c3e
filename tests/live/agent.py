"""The whole live agent as a user meets it: `python run.py io=live ...` as a subprocess on a private PulseAudio.

The test is the user and the room: it speaks into userA with pacat (the agent's microphone is userA.monitor) and
listens on agentB.monitor with parec (the agent's speaker is agentB). A third recorder on userA.monitor is the
"mouth" reference: both parec recorders stamp samples on this process's perf_counter, so end-of-speech on userA and the
agent's first sample on agentB are on one clock, measured outside the agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fern.paths import PROJECT_ROOT

LEVEL = 0.01  # -40 dBFS: "sound" on the recordings (the null sinks are digitally silent otherwise)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Agent:
    """run.py io=live in a subprocess; stderr is collected (and ``listening`` set when the streams are up)."""

    def __init__(self, pulse, tmp: Path, *overrides: str, name: str = "live") -> None:
        self.out, self.db = tmp / "out", tmp / "mlflow.db"
        cmd = [sys.executable, str(PROJECT_ROOT / "run.py"), "io=live", f"io.output_dir={self.out}",
               f"tracking.tracking_uri=sqlite:///{self.db}", f"tracking.run_name={name}", *overrides]
        env = pulse.env(PULSE_SOURCE="userA.monitor", PULSE_SINK="agentB", HF_HUB_OFFLINE="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
        # Ctrl-C as a terminal delivers it: a suite started as a background job (`pytest &` without job control)
        # has SIGINT ignored, the child would inherit that, and interrupt() would do nothing
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=_default_sigint)
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self.listening = threading.Event()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if "live audio: in " in line:
                self.listening.set()

    def wait_listening(self, timeout: float = 150.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent never started listening (exit {self.proc.poll()}):\n{self.log()}")

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the agent did not end within {timeout} s:\n{self.log()}") from None
        for reader in self._readers:
            reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self, tail: int = 4000) -> str:
        return "".join(self.stderr)[-tail:]

    def turns(self) -> list[dict]:
        return json.loads((self.out / "transcript.json").read_text())["turns"]


@dataclass
class Said:
    """One thing the user said into userA: perf_counter times of its first and last sample as the server played them
    (from the userA.monitor recording)."""

    t_start: float
    t_end: float


def sound_times(recorder, t_from: float, level: float = LEVEL) -> np.ndarray:
    """perf_counter times of the samples above ``level`` recorded from ``t_from`` on."""
    i0 = max(0, int(round((t_from - recorder.time_of(0)) * recorder.rate)))
    idx = np.flatnonzero(np.abs(recorder.audio_from(i0)) > level)
    return recorder.time_of(0) + (i0 + idx) / recorder.rate


def say(pulse, mouth, audio: np.ndarray, rate: int) -> Said:
    """Play ``audio`` into userA (blocking) and locate it on the userA.monitor recording."""
    t0 = time.perf_counter()
    pulse.play(audio, rate, "userA")
    time.sleep(0.25)  # the monitor's last fragment
    loud = sound_times(mouth, t0 - 0.05)
    assert loud.size, "the user's speech never reached userA"
    return Said(float(loud[0]), float(loud[-1]))


def wait_for_reply(ears, t_from: float, quiet_s: float = 1.5, timeout: float = 60.0,
                   start_timeout: float | None = None) -> tuple[float, float] | None:
    """Wait until the agent has spoken on agentB after ``t_from`` and then been quiet for ``quiet_s``.
    Returns (first, last) perf_counter times of its sound, or None if it never spoke within ``start_timeout``."""
    start_timeout = timeout if start_timeout is None else start_timeout
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        time.sleep(0.1)
        loud = sound_times(ears, t_from)
        now = time.perf_counter()
        if not loud.size:
            if now - t_from > start_timeout:
                return None
            continue
        if now - loud[-1] >= quiet_s:
            return float(loud[0]), float(loud[-1])
    raise AssertionError(f"the agent was still talking (or silent) after {timeout} s")


def wait_for_turn(agent: Agent, n: int, timeout: float = 60.0) -> None:
    """Wait until the agent has completed ``n`` turns (its console line per turn: sequencing only, nothing measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(" | user: " in line for line in agent.stdout + agent.stderr) >= n:
            return
        if agent.proc.poll() is not None:
            raise AssertionError(f"the agent exited ({agent.proc.returncode}):\n{agent.log()}")
        time.sleep(0.1)
    raise AssertionError(f"turn {n} did not complete within {timeout} s:\n{agent.log()}")


def wait_for_sound(recorder, t_from: float, seconds: float = 0.0, timeout: float = 60.0) -> float:
    """Wait until ``recorder`` has had sound after ``t_from`` and ``seconds`` more have passed; returns the onset."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        loud = sound_times(recorder, t_from)
        if loud.size:
            onset = float(loud[0])
            time.sleep(max(0.0, onset + seconds - time.perf_counter()))
            return onset
        time.sleep(0.05)
    raise AssertionError(f"no sound within {timeout} s")


def wait_quiet(recorder, quiet_s: float, timeout: float = 60.0) -> None:
    """Wait until ``recorder`` has been silent for ``quiet_s``."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        loud = sound_times(recorder, time.perf_counter() - quiet_s - 0.3)
        if not loud.size or time.perf_counter() - loud[-1] >= quiet_s:
            return
        time.sleep(0.1)
    raise AssertionError(f"still sound after {timeout} s")
