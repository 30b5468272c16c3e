"""A private PulseAudio server with null sinks: a real audio server, no sound card, for tests and benchmarks.

    with PrivatePulse() as pa:            # sinks userA (the user's mouth) and agentB (the agent's speaker)
        pa.route_agent()                  # this process: mic = userA.monitor, speaker = agentB
        rec = pa.record("agentB.monitor") # what the agent said, stamped on arrival (parec, 10 ms fragments)
        pa.play(speech, 16000, "userA")   # the user speaks (pacat)
        pa.loopback()                     # agentB -> userA: the agent's voice reaches its own microphone

Recording and playing go through the PulseAudio tools (parec/pacat), not PortAudio: they observe the agent from
outside. ``Recorder`` maps samples to perf_counter times like the live source does: a fragment cannot arrive before
it was captured, so the earliest arrival (minus its position) is the recording's start.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fern.audio import resample

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _null_sink_takes(argument: str) -> bool:
    """Whether this pulseaudio's module-null-sink lists ``argument`` in its usage."""
    out = subprocess.run(["pulseaudio", "--dump-modules", "--verbose"], capture_output=True, text=True, timeout=30)
    usage = out.stdout.split("Name: module-null-sink", 1)[-1].split("\nName: ", 1)[0] if out.returncode == 0 else ""
    if argument not in usage:
        log.warning("PulseAudio's module-null-sink has no %s argument here: new streams may start late", argument)
        return False
    return True


class PulseUnavailable(RuntimeError):
    """pulseaudio is not installed or would not start here."""


class PrivatePulse:
    def __init__(self, sinks: tuple[str, ...] = ("userA", "agentB"), rate: int = 48000) -> None:
        self.sinks, self.rate = sinks, rate
        self.runtime: Path | None = None
        self._saved_env: dict[str, str | None] = {}
        self._modules: list[int] = []

    # -- server ---------------------------------------------------------------------------------------------------
    def start(self) -> "PrivatePulse":
        for tool in ("pulseaudio", "pactl", "pacat", "parec"):
            if shutil.which(tool) is None:
                raise PulseUnavailable(f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils; "
                                       f"scripts/setup.sh does it)")
        self.runtime = Path(tempfile.mkdtemp(prefix="fern-pulse-"))
        loads = ["--load=module-native-protocol-unix"]
        # norewinds: an idle null sink renders up to 2 s ahead and relies on a rewind when a stream joins; on this
        # machine (PulseAudio 16.1) the rewind did not happen, and a new stream stalled for 1.5-2 s after its first
        # few blocks (8 output callbacks in 2 s where 400 were due). Without rewinds the sink runs at the latency
        # its streams ask for: 395-404 callbacks of 400 with the same client. A server too old for the argument
        # would refuse the module, so it is passed only where the module lists it.
        extra = " norewinds=1" if _null_sink_takes("norewinds") else ""
        loads += [f"--load=module-null-sink sink_name={s} rate={self.rate} channels=1{extra}" for s in self.sinks]
        cmd = ["pulseaudio", "-D", "--exit-idle-time=-1", "-n", "--disallow-exit=false", "--log-target=stderr",
               "--high-priority=yes", "--realtime=yes",
               "--use-pid-file=true", *loads]
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["pactl", "info"], env=self.env(), capture_output=True).returncode == 0:
                return self
            time.sleep(0.1)
        raise PulseUnavailable(f"pulseaudio did not start (exit {proc.returncode}): "
                               f"{(proc.stderr or '').strip().splitlines()[-1:] or 'no message'}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE")}
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        env.update(extra)
        return env

    def route_agent(self, source: str = "userA.monitor", sink: str = "agentB") -> None:
        """Point this process's default devices (PortAudio through ALSA's pulse plugin) at the private server:
        the microphone hears ``source``, the speaker plays into ``sink``. Undone by stop()."""
        for key, value in (("XDG_RUNTIME_DIR", str(self.runtime)), ("PULSE_SOURCE", source), ("PULSE_SINK", sink),
                           ("PULSE_SERVER", None)):
            self._saved_env.setdefault(key, os.environ.get(key))
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def pactl(self, *args: str) -> str:
        out = subprocess.run(["pactl", *args], env=self.env(), capture_output=True, text=True, timeout=10)
        if out.returncode:
            raise RuntimeError(f"pactl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout.strip()

    def loopback(self, source: str = "agentB.monitor", sink: str = "userA", latency_ms: int = 20,
                 gain: float = 1.0) -> int:
        """Route ``source`` into ``sink`` (default: the agent's speaker into its own microphone). Returns the module
        index; the sink-input volume is set to ``gain`` (linear)."""
        index = int(self.pactl("load-module", "module-loopback", f"source={source}", f"sink={sink}",
                               f"latency_msec={latency_ms}", "source_dont_move=true", "sink_dont_move=true",
                               "remix=true"))
        self._modules.append(index)
        if gain != 1.0:
            for line in self.pactl("list", "short", "sink-inputs").splitlines():
                fields = line.split()
                if len(fields) > 2 and fields[2] == str(index):
                    self.pactl("set-sink-input-volume", fields[0], str(int(round(gain * 65536))))
        return index

    def unload(self, index: int) -> None:
        self.pactl("unload-module", str(index))
        self._modules.remove(index)

    def stop(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        if self.runtime is None:
            return
        subprocess.run(["pulseaudio", "--kill"], env=self.env(), capture_output=True, timeout=10)
        pid_file = self.runtime / "pulse" / "pid"
        deadline = time.monotonic() + 5
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.runtime, ignore_errors=True)
        self.runtime = None

    def __enter__(self) -> "PrivatePulse":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the outside world's ears and mouth -----------------------------------------------------------------------
    def play(self, audio: np.ndarray, rate: int, sink: str = "userA", wait: bool = True,
             latency_ms: int = 100) -> "Player":
        """Play mono float32 audio into ``sink`` with pacat. ``Player.t_start`` is the perf_counter time the first
        sample was handed to the server (the server adds ``latency_ms`` at most). When the sound is heard is
        measured by recording the sink's monitor, so the buffer is generous: no gaps on a loaded machine."""
        player = Player(self, resample(np.asarray(audio, np.float32), rate, self.rate), sink, latency_ms)
        if wait:
            player.wait()
        return player

    def record(self, source: str = "agentB.monitor", latency_ms: int = 10) -> "Recorder":
        return Recorder(self, source, latency_ms)


class Player:
    def __init__(self, pulse: PrivatePulse, audio: np.ndarray, sink: str, latency_ms: int) -> None:
        self.rate = pulse.rate
        self._proc = subprocess.Popen(
            ["pacat", "--playback", "-d", sink, "--raw", "--format=float32le", f"--rate={pulse.rate}",
             "--channels=1", f"--latency-msec={latency_ms}"],
            stdin=subprocess.PIPE, env=pulse.env())
        self.duration_s = audio.size / self.rate
        self.t_start = time.perf_counter()
        self._thread = threading.Thread(target=self._feed, args=(audio,), daemon=True)
        self._thread.start()

    def _feed(self, audio: np.ndarray) -> None:
        try:
            self._proc.stdin.write(audio.astype("<f4").tobytes())
            self._proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        self._proc.wait(timeout=timeout if timeout is not None else self.duration_s + 10)

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait()


class Recorder:
    """parec on ``source``: float32 mono at the server's rate, every fragment stamped on arrival."""

    def __init__(self, pulse: PrivatePulse, source: str, latency_ms: int) -> None:
        self.rate = pulse.rate
        self._proc = subprocess.Popen(
            ["parec", "-d", source, "--raw", "--format=float32le", f"--rate={pulse.rate}", "--channels=1",
             f"--latency-msec={latency_ms}"],
            stdout=subprocess.PIPE, env=pulse.env())
        self._parts: list[np.ndarray] = []
        self._n = 0
        self._base: float | None = None  # perf_counter time of sample 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._ready = threading.Event()

    def wait_ready(self, timeout: float = 10.0) -> "Recorder":
        """Block until the first audio arrived (parec can take a second to connect on a loaded machine)."""
        if not self._ready.wait(timeout):
            raise RuntimeError(f"parec delivered nothing in {timeout} s")
        return self

    def _read(self) -> None:
        fd = self._proc.stdout.fileno()
        rest = b""
        while True:
            data = os.read(fd, 4 * 4800)
            now = time.perf_counter()
            if not data:
                return
            data = rest + data
            whole = len(data) // 4 * 4
            rest = data[whole:]
            part = np.frombuffer(data[:whole], "<f4").astype(np.float32)
            with self._lock:
                self._parts.append(part)
                self._n += part.size
                base = now - self._n / self.rate
                self._base = base if self._base is None else min(self._base, base)
            self._ready.set()

    def audio(self) -> np.ndarray:
        with self._lock:
            return np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)

    def audio_from(self, start: int) -> np.ndarray:
        """The samples from index ``start`` on; cheap for the recent past (only the fragments after it are joined),
        so a test can poll a long recording without loading the machine it measures."""
        with self._lock:
            parts, first = [], self._n
            for part in reversed(self._parts):
                if first <= start:
                    break
                parts.append(part)
                first -= part.size
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts[::-1])[max(0, start - first):]

    def time_of(self, index: float) -> float:
        """perf_counter time at which sample ``index`` was captured by the server."""
        with self._lock:
            if self._base is None:
                raise RuntimeError("nothing recorded yet")
            return self._base + index / self.rate

    def stop(self) -> np.ndarray:
        self._proc.terminate()
        self._proc.wait(timeout=5)
        self._thread.join(timeout=5)
        return self.audio()
