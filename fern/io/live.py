"""Live audio I/O: the microphone as an AudioSource and the speaker as an AudioSink, through PortAudio (sounddevice).

Design
- Two callback streams (an ``InputStream`` and an ``OutputStream``), not one duplex ``Stream``: on Linux through the
  ALSA ``pulse``/``default`` devices a duplex stream was measured to stall for seconds at start-up or not start at
  all on this machine, while the two half streams start reliably; two streams also allow a microphone and a speaker
  on different cards (each at its own rate). What a duplex stream would have given — mic and speaker on one clock
  and an aligned echo reference — is done explicitly: both streams are mapped onto the one session clock (below),
  and the echo canceller's reference is the played audio fetched *by session time* for each microphone block.
- The callbacks only copy: the input callback queues the block with its arrival time, the output callback pops queued
  agent audio (or writes silence). Resampling, echo cancellation and bookkeeping run outside the audio thread.
- Session clock: output sample ``p`` is heard at ``base_out + p / rate`` where ``base_out`` is estimated from every
  callback as ``now + (outputBufferDacTime - currentTime) - p / rate`` (the device's reported output latency
  included), median over the last 2 s. Input sample ``p`` was captured at ``base_in + p / rate`` where ``base_in`` is
  the minimum over the last seconds of ``arrival - p_end / rate`` (a block cannot arrive before it was captured; late
  callbacks are ignored). Both are perf_counter-based, converted to the session clock given by ``use_clock``.
- Interruption: ``stop()`` drops everything not yet handed to the device, ramps the next 5 ms down (no click), and
  returns the session time the last sample handed over will be heard. Each ``play()`` is a ``PlayedChunk`` whose
  ``played_samples`` says how much of it the speaker really played (final once stopped or drained).

Everything the user and the agent said is kept on the session clock: ``track("user")`` is the microphone as captured
(before echo cancellation), ``track("agent")`` the speaker as played; ``timeline()`` mixes them.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from fern.errors import AudioDeviceError, ConfigValueError
from fern.io.resample import StreamResampler
from fern.io.track import Track

log = logging.getLogger(__name__)
_SHARED_LOCK = threading.RLock()
_OPEN: set[int] = set()  # LiveAudio objects with open streams (PortAudio must not be re-initialised under them)

FADE_MS = 5.0  # ramp applied to the audio at a stop, so an interruption does not click


# ---- devices ----------------------------------------------------------------------------------------------------
def _sd():
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise AudioDeviceError("PortAudio is not installed (Debian/Ubuntu: apt-get install libportaudio2 "
                               "libasound2-plugins)") from exc
    return sd


def query_devices() -> list[dict[str, Any]]:
    """Every PortAudio device: index, name, host API, input/output channels, default rate, default in/out."""
    sd = _sd()
    with _SHARED_LOCK:
        if not _OPEN:  # re-scan (PortAudio lists devices once per initialisation), unless streams are open
            sd._terminate()
            sd._initialize()
    apis = sd.query_hostapis()
    default_in, default_out = sd.default.device
    out = []
    for d in sd.query_devices():
        out.append({"index": d["index"], "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                    "inputs": d["max_input_channels"], "outputs": d["max_output_channels"],
                    "default_rate": int(d["default_samplerate"]),
                    "default_input": d["index"] == default_in, "default_output": d["index"] == default_out})
    return out


def format_devices(devices: list[dict[str, Any]] | None = None) -> str:
    """The device table ``io.list_devices=true`` prints."""
    devices = query_devices() if devices is None else devices
    if not devices:
        return "no audio devices found (no sound card, and no sound server such as PulseAudio/PipeWire reachable)"
    lines = [f"{'#':>3}  {'name':<32} {'host api':<10} {'in':>3} {'out':>3} {'rate':>6}  default"]
    for d in devices:
        mark = ",".join(k for k, v in (("input", d["default_input"]), ("output", d["default_output"])) if v)
        lines.append(f"{d['index']:>3}  {d['name'][:32]:<32} {d['hostapi'][:10]:<10} {d['inputs']:>3} "
                     f"{d['outputs']:>3} {d['default_rate']:>6}  {mark}")
    lines.append("choose with io.input_device=<# or name> io.output_device=<# or name> "
                 "(a case-insensitive part of the name)")
    return "\n".join(lines)


def _short_list(devices: list[dict[str, Any]], kind: str) -> str:
    key = "inputs" if kind == "input" else "outputs"
    have = [f"{d['index']} {d['name']!r}" for d in devices if d[key] > 0]
    return ", ".join(have) if have else "none"


def resolve_device(spec: int | str | None, kind: str) -> tuple[int, dict[str, Any]]:
    """``spec`` (None: the system default; an index; or a case-insensitive name substring) -> (index, info).
    Raises AudioDeviceError with the devices there are."""
    devices = query_devices()
    key = "inputs" if kind == "input" else "outputs"
    usable = [d for d in devices if d[key] > 0]
    if not usable:
        raise AudioDeviceError(f"no audio {kind} device on this machine (no sound card and no sound server "
                               f"reachable; on a headless machine start PulseAudio, see README 'Live agent')")
    setting = f"io.{kind}_device"
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default")):
        chosen = [d for d in usable if d[f"default_{kind}"]] or usable[:1]
        return chosen[0]["index"], chosen[0]
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        match = [d for d in devices if d["index"] == index]
        if not match:
            raise AudioDeviceError(f"{setting}={index}: no such device; {kind} devices: "
                                   f"{_short_list(devices, kind)}")
        if match[0][key] == 0:
            raise AudioDeviceError(f"{setting}={index} ({match[0]['name']!r}) has no {kind} channels; {kind} "
                                   f"devices: {_short_list(devices, kind)}")
        return index, match[0]
    exact = [d for d in usable if d["name"].lower() == text.lower()]
    found = exact or [d for d in usable if text.lower() in d["name"].lower()]
    if not found:
        raise AudioDeviceError(f"{setting}={text!r} matches no {kind} device; {kind} devices: "
                               f"{_short_list(devices, kind)}")
    if len(found) > 1:
        raise AudioDeviceError(f"{setting}={text!r} matches several {kind} devices "
                               f"({_short_list(found, kind)}): give more of the name or the index")
    return found[0]["index"], found[0]


def _device_error(exc: Exception, kind: str, info: dict[str, Any], rate: int) -> AudioDeviceError:
    """A PortAudio failure to open a stream, in one line the user can act on."""
    args = getattr(exc, "args", ())
    message = str(args[0]) if args else str(exc)
    code = args[1] if len(args) > 1 else None
    name = f"{kind} device {info['index']} {info['name']!r}"
    low = message.lower()
    if code == -9985 or "unavailable" in low or "busy" in low:  # paDeviceUnavailable / EBUSY
        return AudioDeviceError(f"{name} is busy (another program holds it); close it or choose another "
                                f"io.{kind}_device")
    if code == -9997 or "sample rate" in low:  # paInvalidSampleRate
        return AudioDeviceError(f"{name} does not support {rate} Hz (its default is {info['default_rate']} Hz): "
                                f"set io.device_rate=null to use the device's own rate")
    if code == -9998 or "channel" in low:  # paInvalidChannelCount
        return AudioDeviceError(f"{name} cannot open one channel ({message})")
    return AudioDeviceError(f"{name} could not be opened at {rate} Hz: {message}")


# ---- clock mapping ----------------------------------------------------------------------------------------------
class _StreamClock:
    """perf_counter time of stream sample 0, from (time of sample p) observations; robust to late callbacks."""

    def __init__(self, rate: int, mode: str, window_s: float = 2.0) -> None:
        self.rate = rate
        self.mode = mode  # "min": arrivals (never early); "median": reported DAC times (noisy both ways)
        self._recent: deque[float] = deque(maxlen=max(8, int(window_s * 100)))
        self._value: float | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the history (after an xrun the device's position no longer follows ours)."""
        with self._lock:
            self._recent.clear()

    def observe(self, t_of_p: float, p: int) -> None:
        base = t_of_p - p / self.rate
        with self._lock:
            self._recent.append(base)
            if self.mode == "min":
                self._value = min(self._recent)
            else:
                self._value = float(np.median(self._recent))

    @property
    def base(self) -> float | None:
        return self._value

    def time_of(self, p: float) -> float | None:
        return None if self._value is None else self._value + p / self.rate


# ---- played audio -----------------------------------------------------------------------------------------------
@dataclass
class PlayedChunk:
    """One ``play()``: where it sits on the speaker and how much of it was really played.

    ``played_samples`` (at the caller's ``sample_rate``) grows as the device takes the audio; it is final once
    ``done`` (fully played, or cut by ``stop()``). ``heard_at`` is the session time of its first sample as predicted
    at ``play()``; ``started_at`` and ``segments`` are measured as the device takes the audio, so they stay right
    when the device underruns (it then plays the rest of the chunk later than predicted)."""

    seq: int
    sample_rate: int
    n_samples: int
    heard_at: float
    samples: np.ndarray = field(repr=False)
    start: int = 0  # device position of the first sample
    n_device: int = 0
    played_device: int = 0
    stopped: bool = False
    device_rate: int = 0
    started_at: float | None = None  # session time its first sample was heard, measured when the device took it
    # (offset in the chunk, device samples, session time the first of them is heard): one per audio callback
    segments: list[tuple[int, int, float]] = field(default_factory=list, repr=False)

    @property
    def done(self) -> bool:
        return self.stopped or self.played_device >= self.n_device

    @property
    def played_samples(self) -> int:
        return self._at_caller_rate(self.played_device)

    def _at_caller_rate(self, device_samples: float) -> int:
        if self.n_device == 0:
            return 0
        return min(self.n_samples, int(round(device_samples * self.n_samples / self.n_device)))

    @property
    def heard_until(self) -> float:
        """Session time the last played sample of this chunk is heard (== the start if none was played)."""
        if self.segments:
            _, n, t0 = self.segments[-1]
            return t0 + n / (self.device_rate or self.sample_rate)
        start = self.started_at if self.started_at is not None else self.heard_at
        return start + self.played_samples / self.sample_rate

    @property
    def ends_at(self) -> float:
        """When the whole chunk will have been heard: measured where the device has taken it, the rest at its pace
        after that (the time it was cut, for a stopped chunk)."""
        if self.stopped or not self.segments:
            return self.heard_until if self.stopped else self.heard_at + self.n_samples / self.sample_rate
        return self.heard_until + (self.n_device - self.played_device) / (self.device_rate or self.sample_rate)


@dataclass
class StopReport:
    t_requested: float  # session time stop() was called
    t_silent: float  # session time the last sample handed to the device is heard (the playback really ends)
    chunks: list[PlayedChunk]  # the chunks that were cut or dropped (played_samples final)


# ---- the device pair ---------------------------------------------------------------------------------------------
class LiveAudio:
    """A microphone and a speaker on one session clock. ``.source`` / ``.sink`` are the pipeline's two ends.

    Parameters are those of ``io=live`` (see conf/io/live.yaml). Nothing is opened until ``start()`` (called by the
    first ``source.blocks()``), but devices and rates are validated in the constructor, so a bad setting fails
    before any model loads.
    """

    def __init__(self, *, input_device: int | str | None = None, output_device: int | str | None = None,
                 device_rate: int | None = None, sample_rate: int = 16000, output_rate: int = 24000,
                 block_ms: int = 20, device_block_ms: float = 5.0, input_block_ms: float | None = 10.0,
                 input_latency_ms: float | None = None,
                 output_latency_ms: float | None = None,
                 echo: str = "aec", echo_reference_lead_ms: float = 10.0,
                 echo_bypass_margin_db: float | None = 10.0, half_duplex: bool = False,
                 half_duplex_tail_ms: float = 250.0, max_duration_s: float | None = None, clock: Any = None) -> None:
        if block_ms <= 0 or (sample_rate * block_ms) % 1000:
            raise ConfigValueError(f"io.block_ms={block_ms} must be a positive whole number of samples at "
                                   f"{sample_rate} Hz")
        if max_duration_s is not None and max_duration_s <= 0:
            raise ConfigValueError(f"io.max_duration_s={max_duration_s} must be positive (or null: until Ctrl-C)")
        from fern.echo import make_echo_canceller
        from fern.echo.gate import NearEndGate

        self.sample_rate, self.output_rate, self.block_ms = sample_rate, output_rate, block_ms
        self.block = sample_rate * block_ms // 1000
        self.max_duration_s = max_duration_s
        self.half_duplex = half_duplex
        self.half_duplex_tail_s = half_duplex_tail_ms / 1000
        self.echo_mode = echo
        self.echo_reference_lead_s = echo_reference_lead_ms / 1000
        self._in_index, self._in_info = resolve_device(input_device, "input")
        self._out_index, self._out_info = resolve_device(output_device, "output")
        self.in_rate = int(device_rate or self._in_info["default_rate"])
        self.out_rate = int(device_rate or self._out_info["default_rate"])
        sd = _sd()
        for kind, index, info, rate in (("input", self._in_index, self._in_info, self.in_rate),
                                        ("output", self._out_index, self._out_info, self.out_rate)):
            check = sd.check_input_settings if kind == "input" else sd.check_output_settings
            try:
                check(device=index, samplerate=rate, channels=1, dtype="float32")
            except Exception as exc:  # PortAudioError, ValueError
                raise _device_error(exc, kind, info, rate) from None
        self._in_latency = "low" if input_latency_ms is None else input_latency_ms / 1000
        self._out_latency = "low" if output_latency_ms is None else output_latency_ms / 1000
        self.aec = make_echo_canceller(echo, sample_rate)  # fails now if the canceller is not installed
        # the raw microphone where the echo is negligible: the canceller's double-talk suppression eats speech onsets
        self._gate = (NearEndGate(sample_rate, block_ms, echo_bypass_margin_db)
                      if echo != "none" and echo_bypass_margin_db is not None else None)
        self._origin = time.perf_counter()  # perf_counter of session time 0 (see use_clock)
        # the device's own period: shorter than the stage block, so PortAudio's "low" latency is lower (2 periods)
        # the microphone's period may be shorter: its callback only queues, and a late one loses nothing (ALSA keeps
        # capturing into its buffer), while a late speaker callback is an audible gap
        self._in_blocks = max(1, round(self.in_rate * (input_block_ms or device_block_ms) / 1000))
        self._out_blocks = max(1, round(self.out_rate * device_block_ms / 1000))
        self._lock = threading.Lock()
        self._started = False
        self._closed = threading.Event()
        self._in_stream = self._out_stream = None
        # input
        self._mic_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._in_clock = _StreamClock(self.in_rate, "min", window_s=10.0)
        self._in_pos = 0  # device input samples received
        self._mic_raw = Track(sample_rate)  # placed at index positions, shifted at read time (see track())
        self._mic_out = Track(sample_rate)
        self.keep_reference = False  # True: keep the echo reference as track "reference" (fern.bench.aec)
        self._far_track = Track(sample_rate)
        self._mic_len = 0  # 16 kHz samples captured
        self.input_overflows = 0
        # output
        self._out_clock = _StreamClock(self.out_rate, "median", window_s=0.3)
        self._first_callback = threading.Event()  # set once the output callbacks run at the device's pace
        self._callback_times: deque[float] = deque(maxlen=11)
        self._first_block = threading.Event()
        self._queue: deque[list] = deque()  # [chunk, device samples, offset]
        self._written = 0  # device samples handed to PortAudio
        self._fade = np.zeros(0, np.float32)  # ramp-down still to play after a stop
        self._fade_chunks: list[tuple[PlayedChunk, int]] = []
        self._chunks: list[PlayedChunk] = []
        self._resamplers: dict[int, StreamResampler] = {}
        self.output_underflows = 0  # callbacks flagged by the device
        self.underflow_events: list[float] = []  # when bursts of them began (flagged callbacks < 100 ms apart)
        self.underflow_times: list[float] = []
        self.held_blocks = 0  # callbacks off the device's pace: given silence, the agent's audio waited
        self._last_callback: tuple[float | None, float, int] = (None, 0.0, 0)
        self.last_stop: StopReport | None = None
        ring_s = 10
        self._far_ring = np.zeros(ring_s * self.out_rate, np.float32)  # what was written, by device position
        # Everything that imports or designs filters is done now: scipy's import holds the GIL for up to a second,
        # and an audio callback starved that long underruns and loses audio (measured: the first reply lost).
        self._resamplers[output_rate] = StreamResampler(output_rate, self.out_rate)
        self._in_resampler = StreamResampler(self.in_rate, sample_rate)
        self._far_resampler_proto = StreamResampler(self.out_rate, sample_rate)
        self.aec.process(np.zeros(self.block, np.float32), np.zeros(self.block, np.float32))
        self.aec.reset()
        self.source = LiveSource(self)
        self.sink = LiveSink(self)

    # -- clock ----------------------------------------------------------------------------------------------------
    def use_clock(self, clock: Any) -> None:
        """Report times on ``clock`` (a fern.clock.SessionClock: the pipeline's). Call before start()."""
        self._origin = time.perf_counter() - clock.now()

    def now(self) -> float:
        return time.perf_counter() - self._origin

    def _heard_time(self, position: float) -> float:
        """Session time at which output device sample ``position`` is (or was) heard."""
        t = self._out_clock.time_of(position)
        if t is None:  # no callback yet: the stream's nominal latency from now
            lat = self._out_stream.latency if self._out_stream is not None else 0.0
            t = time.perf_counter() + lat + (position - self._written) / self.out_rate
        return t - self._origin

    def _captured_time(self, position: float) -> float | None:
        t = self._in_clock.time_of(position)
        return None if t is None else t - self._origin

    @property
    def output_latency_s(self) -> float:
        """Latency the output device reports (time from handing a sample over to hearing it)."""
        return float(self._out_stream.latency) if self._out_stream is not None else float("nan")

    @property
    def input_latency_s(self) -> float:
        return float(self._in_stream.latency) if self._in_stream is not None else float("nan")

    # -- streams --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        # The callbacks are Python: they need the GIL, which a thread running a model (tokenizer, generate loop, numpy)
        # holds for the interpreter's switch interval (5 ms) at a time. With 10 ms periods and 20 ms of buffer, that
        # wait on 2 busy cores underran the speaker thousands of times per conversation; 1 ms lets them in on time.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        sd = _sd()
        try:
            self._out_stream = sd.OutputStream(device=self._out_index, samplerate=self.out_rate, channels=1,
                                               dtype="float32", blocksize=self._out_blocks,
                                               latency=self._out_latency, callback=self._output_callback)
        except Exception as exc:
            raise _device_error(exc, "output", self._out_info, self.out_rate) from None
        try:
            self._in_stream = sd.InputStream(device=self._in_index, samplerate=self.in_rate, channels=1,
                                             dtype="float32", blocksize=self._in_blocks,
                                             latency=self._in_latency, callback=self._input_callback)
        except Exception as exc:
            self._out_stream.close()
            raise _device_error(exc, "input", self._in_info, self.in_rate) from None
        with _SHARED_LOCK:
            _OPEN.add(id(self))
        t0 = time.perf_counter()
        self._out_stream.start()
        self._in_stream.start()
        # the first callbacks can take a second or more (PulseAudio through ALSA); times are only known after them
        if not (self._first_callback.wait(10.0) and self._first_block.wait(5.0)):
            log.warning("live audio: the %s stream is not running steadily yet; early timings may be off",
                        "output" if not self._first_callback.is_set() else "input")
        self.startup_s = time.perf_counter() - t0
        log.info("live audio: in %r @ %d Hz (latency %.0f ms), out %r @ %d Hz (latency %.0f ms), echo=%s%s",
                 self._in_info["name"], self.in_rate, 1000 * self.input_latency_s, self._out_info["name"],
                 self.out_rate, 1000 * self.output_latency_s, self.echo_mode,
                 ", half-duplex" if self.half_duplex else "")

    def close(self) -> None:
        """Stop and close both streams (idempotent). What was recorded stays readable."""
        if self._started and not self._closed.is_set():
            # the health of the session's audio: underflows are gaps the listener heard (and moved the echo path)
            times = self.underflow_times
            events = ", ".join(f"{t:.1f}" for t in self.underflow_events[:12])
            log.info("live audio closed: %d output underflows in %d events%s, %d blocks held off pace, "
                     "%d input overflows", self.output_underflows, len(self.underflow_events),
                     f" (at {events}{' ...' if len(self.underflow_events) > 12 else ''} s)" if times else "",
                     self.held_blocks, self.input_overflows)
        self._closed.set()
        for stream in (self._in_stream, self._out_stream):
            if stream is not None:
                try:
                    stream.abort()
                    stream.close()
                except Exception:  # already closed / device gone: nothing left to release
                    pass
        self._in_stream = self._out_stream = None
        with _SHARED_LOCK:
            _OPEN.discard(id(self))
        _forget(self)

    # -- audio thread callbacks -----------------------------------------------------------------------------------
    def _input_callback(self, indata, frames, time_info, status) -> None:
        self._mic_queue.put((time.perf_counter(), indata[:, 0].copy(), bool(status.input_overflow)))
        self._first_block.set()

    def _output_callback(self, outdata, frames, time_info, status) -> None:
        now = time.perf_counter()
        if status.output_underflow:  # the device ran dry: its timeline moved on without us
            self.output_underflows += 1
            if not self.underflow_times or now - self._origin - self.underflow_times[-1] > 0.1:
                self.underflow_events.append(now - self._origin)  # a burst of flagged callbacks is one event
            self.underflow_times.append(now - self._origin)
            self._out_clock.reset()
        self._callback_times.append(now)
        if not self._first_callback.is_set():
            # times are trusted once the callbacks run at the device's pace (the first ones can come in a burst)
            period = frames / self.out_rate
            times = self._callback_times
            if len(times) == times.maxlen and 0.5 * period * 10 <= times[-1] - times[0] <= 1.5 * period * 10:
                self._out_clock.reset()
                self._first_callback.set()
        latency = time_info.outputBufferDacTime - time_info.currentTime
        if not 0.0 <= latency < 2.0:  # some host APIs report 0 or garbage
            latency = self._out_stream.latency if self._out_stream is not None else 0.0
        dac = now + latency  # perf_counter time the first sample of this block is heard
        # Off pace: after an underrun, PulseAudio's ALSA plugin can call back every ~1 ms for a while, each time
        # reporting a DAC time only ~1 ms after the previous block's although that block was 10 ms long; what is
        # written then is dropped (measured: 1.8 s of a reply lost in one such burst). Such blocks get silence and the
        # queue waits: the reply is heard late, but whole.
        prev_dac, prev_now, prev_frames = self._last_callback
        self._last_callback = (dac, now, frames)
        off_pace = (prev_dac is not None and dac < prev_dac + prev_frames / self.out_rate - 0.003
                    and now - prev_now < 0.5 * frames / self.out_rate)
        if off_pace:
            self.held_blocks += 1
        out = outdata[:, 0]
        out.fill(0.0)
        with self._lock:
            if not off_pace:
                self._out_clock.observe(dac, self._written)
            filled = frames if off_pace else 0
            if self._fade.size and not off_pace:  # the ramp-down after a stop
                n = min(frames, self._fade.size)
                out[:n] = self._fade[:n]
                self._fade = self._fade[n:]
                taken = n
                while self._fade_chunks and taken:
                    chunk, left = self._fade_chunks[0]
                    k = min(left, taken)
                    chunk.segments.append((chunk.played_device, k, dac + (n - taken) / self.out_rate - self._origin))
                    chunk.played_device += k
                    taken -= k
                    if left - k:
                        self._fade_chunks[0] = (chunk, left - k)
                    else:
                        self._fade_chunks.pop(0)
                filled = n
            while filled < frames and self._queue:
                entry = self._queue[0]
                chunk, samples, offset = entry
                n = min(frames - filled, samples.size - offset)
                t_heard = dac + filled / self.out_rate - self._origin
                if offset == 0:  # measured, not predicted: an underrun since play() moves it later
                    chunk.started_at = t_heard
                chunk.segments.append((offset, n, t_heard))
                out[filled:filled + n] = samples[offset:offset + n]
                chunk.played_device += n
                filled += n
                entry[2] = offset + n
                if entry[2] >= samples.size:
                    self._queue.popleft()
            ring = self._far_ring
            i = self._written % ring.size
            if i + frames <= ring.size:
                ring[i:i + frames] = out
            else:
                k = ring.size - i
                ring[i:] = out[:k]
                ring[:frames - k] = out[k:]
            self._written += frames

    # -- output (used by LiveSink) --------------------------------------------------------------------------------
    def play(self, samples: np.ndarray, sample_rate: int) -> PlayedChunk:
        samples = np.asarray(samples, np.float32).reshape(-1)
        with self._lock:
            resampler = self._resamplers.get(sample_rate)
            if resampler is not None and not self._queue and not self._fade.size:
                resampler.reset()  # a new burst after silence: the filter tail belongs to audio long played
            if resampler is None:
                resampler = self._resamplers[sample_rate] = StreamResampler(sample_rate, self.out_rate)
            device = resampler.process(samples)
            if self._queue:
                chunk0, dev0, off0 = self._queue[-1]
                start = chunk0.start + dev0.size
            else:
                start = self._written + self._fade.size
            chunk = PlayedChunk(seq=len(self._chunks), sample_rate=sample_rate, n_samples=samples.size,
                                heard_at=0.0, samples=samples, start=start, n_device=device.size,
                                device_rate=self.out_rate)
            chunk.heard_at = self._heard_time(start)
            self._chunks.append(chunk)
            if device.size:
                self._queue.append([chunk, device, 0])
        return chunk

    def stop(self) -> StopReport:
        """Drop agent audio not yet handed to the device (after a 5 ms ramp-down). Returns when it goes silent."""
        t_requested = self.now()
        fade_n = int(FADE_MS / 1000 * self.out_rate)
        cut: list[PlayedChunk] = []
        with self._lock:
            ramp_parts, fade_chunks = [], []
            need = fade_n
            for chunk, samples, offset in self._queue:
                take = min(need, samples.size - offset)
                if take > 0:
                    ramp_parts.append(samples[offset:offset + take])
                    fade_chunks.append((chunk, take))
                    need -= take
                chunk.stopped = True
                cut.append(chunk)
            self._queue.clear()
            if ramp_parts:
                ramp = np.concatenate(ramp_parts)
                self._fade = ramp * np.linspace(1.0, 0.0, ramp.size, dtype=np.float32)
                self._fade_chunks = fade_chunks
            end = self._written + self._fade.size
            for resampler in self._resamplers.values():
                resampler.reset()
        t_silent = self._heard_time(end)
        if not cut:  # nothing queued: playback had already finished (or never started)
            last = self._chunks[-1] if self._chunks else None
            t_silent = min(t_silent, last.heard_until) if last else min(t_silent, t_requested)
        self.last_stop = StopReport(t_requested=t_requested, t_silent=t_silent, chunks=cut)
        return self.last_stop

    def played_until(self) -> float:
        """Session time the last sample given to the speaker will be (or was) heard: ``heard_until`` of the last
        chunk that played any audio, or 0.0 if none."""
        with self._lock:
            chunks = [c for c in self._chunks if c.n_device and (not c.stopped or c.played_device)]
            if not chunks:
                return 0.0
            last = chunks[-1]
            if last.stopped or last.done:
                return last.heard_until
            queued = self._fade.size + sum(samples.size - offset for _, samples, offset in self._queue)
            written = self._written
        # what is still queued plays right after what the device holds, at its pace (from the clock as it is now:
        # positions given at play() move when the device underruns or blocks are held)
        return self._heard_time(written) + queued / self.out_rate

    def agent_audible(self, t0: float, t1: float | None = None, tail_s: float = 0.0) -> bool:
        """Whether agent audio is heard at some time in [t0, t1] (session times), counting ``tail_s`` of room echo
        after each chunk. Queued audio counts as it will be heard."""
        t1 = t0 if t1 is None else t1
        with self._lock:
            recent = self._chunks[-64:]
        queue_end: float | None = None
        for c in reversed(recent):
            if c.stopped and c.played_device == 0:
                continue
            start = c.started_at if c.started_at is not None else c.heard_at  # measured once the device took it
            if c.done:
                end = c.heard_until + tail_s
            else:  # still playing or queued: until the queue has played out
                queue_end = self.played_until() if queue_end is None else queue_end
                end = max(c.ends_at, queue_end) + tail_s
            if start <= t1 and end >= t0:
                return True
            if end < t0 and not c.stopped and start < t0 - 30:  # far in the past: older ones too
                break
        return False

    def playback_log(self) -> list[PlayedChunk]:
        with self._lock:
            return list(self._chunks)

    # -- input (used by LiveSource) -------------------------------------------------------------------------------
    def _far_reference(self, t_start: float, n: int, state: dict) -> np.ndarray:
        """The played audio heard at session times [t_start, t_start + n / sample_rate), at the stage rate: the echo
        canceller's reference. Read contiguously; re-synchronised (and the resampler reset) if the clocks have moved
        by more than 20 ms."""
        t_ref = t_start + self.echo_reference_lead_s
        base = self._out_clock.base
        if base is None:
            return np.zeros(n, np.float32)
        want = int(round((t_ref + self._origin - base) * self.out_rate))
        if state.get("pos") is None or abs(state["pos"] - want) > 0.02 * self.out_rate:
            state["pos"] = want
            state["resampler"] = resampler = self._far_resampler_proto
            resampler.reset()
            state["buf"] = np.zeros(0, np.float32)
        resampler = state["resampler"]
        buf = state["buf"]
        while buf.size < n:
            need = max(1, int(np.ceil((n - buf.size) * self.out_rate / self.sample_rate)))
            pos = state["pos"]
            with self._lock:
                written, ring = self._written, self._far_ring
                seg = np.zeros(need, np.float32)
                lo, hi = max(pos, written - ring.size), min(pos + need, written)
                if hi > lo:
                    idx = np.arange(lo, hi) % ring.size
                    seg[lo - pos:hi - pos] = ring[idx]
            state["pos"] = pos + need
            buf = np.concatenate([buf, resampler.process(seg)])
        state["buf"] = buf[n:]
        return buf[:n]

    def timed_blocks(self) -> Iterator[tuple[float, np.ndarray]]:
        """(session time the block's last sample was captured, block): ``block_ms`` blocks at ``sample_rate``,
        echo-cancelled (io.echo) and silenced while the agent speaks (io.half_duplex). Ends at io.max_duration_s
        or close()."""
        self.start()
        resampler = self._in_resampler
        pending = np.zeros(0, np.float32)
        far_state: dict = {}
        t_first: float | None = None
        deadline = None if self.max_duration_s is None else self.now() + self.max_duration_s
        while not self._closed.is_set():
            try:
                arrival, x, overflow = self._mic_queue.get(timeout=0.05)
            except queue.Empty:
                if deadline is not None and self.now() >= deadline:
                    return
                continue
            if overflow:  # samples were lost: the capture timeline jumped
                self.input_overflows += 1
                self._in_clock.reset()
            self._in_pos += x.size
            self._in_clock.observe(arrival, self._in_pos)
            pending = np.concatenate([pending, resampler.process(x)])
            while pending.size >= self.block:
                block, pending = pending[:self.block], pending[self.block:]
                j0 = self._mic_len
                self._mic_len += block.size
                self._mic_raw.mix(block, self.sample_rate, j0 / self.sample_rate)
                # capture time of this block's last sample (the resampler's 0.6 ms delay included)
                t_end = self._captured_time(self._mic_len * self.in_rate / self.sample_rate) - resampler.delay_s
                t_start = t_end - self.block_ms / 1000
                if t_first is None:
                    t_first = t_start
                if self.echo_mode != "none" or self.keep_reference:
                    far = self._far_reference(t_start, block.size, far_state)
                    if self.keep_reference:
                        self._far_track.mix(far, self.sample_rate, j0 / self.sample_rate)
                    if self.echo_mode != "none":
                        cleaned = self.aec.process(block, far)
                        block = cleaned if self._gate is None else self._gate.choose(block, far, cleaned)
                if self.half_duplex and self.agent_audible(t_start, t_end, self.half_duplex_tail_s):
                    block = np.zeros_like(block)
                self._mic_out.mix(block, self.sample_rate, j0 / self.sample_rate)
                yield t_end, block
                if deadline is not None and t_end >= deadline:
                    return

    def _mic_offset(self) -> float:
        """Session time of microphone sample 0 (the mic tracks are stored by sample index)."""
        t = self._captured_time(0)
        return 0.0 if t is None else t

    # -- timeline -------------------------------------------------------------------------------------------------
    def track(self, name: str, sample_rate: int | None = None) -> np.ndarray:
        """One side on the session time axis at ``sample_rate`` (default: the sink's): "user" (the microphone as
        captured), "user_processed" (what the pipeline got: after echo cancellation / half-duplex), "agent" (the
        speaker as played: cut where playback was stopped)."""
        rate = sample_rate or self.output_rate
        out = Track(rate)
        if name in ("user", "user_processed", "reference"):
            src = {"user": self._mic_raw, "user_processed": self._mic_out, "reference": self._far_track}[name]
            audio = src.audio(self.sample_rate)
            if audio.size:
                out.mix(audio, self.sample_rate, self._mic_offset())
        elif name == "agent":
            for c in self.playback_log():
                for offset, n, t in list(c.segments):  # each piece where the device played it
                    lo, hi = c._at_caller_rate(offset), c._at_caller_rate(offset + n)
                    if hi > lo:
                        out.mix(c.samples[lo:hi], c.sample_rate, t)
        else:
            raise KeyError(f"no track {name!r}: user, user_processed, reference, agent")
        return out.audio(rate)

    def timeline(self, sample_rate: int | None = None) -> np.ndarray:
        user, agent = self.track("user", sample_rate), self.track("agent", sample_rate)
        mixed = np.zeros(max(user.size, agent.size), np.float32)
        mixed[:user.size] += user
        mixed[:agent.size] += agent
        return np.clip(mixed, -1.0, 1.0)


class LiveSource:
    """The microphone (AudioSource). ``blocks()`` starts the streams; blocks arrive as captured."""

    def __init__(self, audio: LiveAudio) -> None:
        self.audio = audio
        self.sample_rate = audio.sample_rate
        self.block_ms = audio.block_ms

    def blocks(self) -> Iterator[np.ndarray]:
        for _, block in self.audio.timed_blocks():
            yield block

    def timed_blocks(self) -> Iterator[tuple[float, np.ndarray]]:
        return self.audio.timed_blocks()

    def close(self) -> None:
        self.audio.close()


class LiveSink:
    """The speaker (AudioSink), plus what barge-in needs: per-chunk played samples, stop time, is-the-agent-audible.

    ``record_user`` is a no-op: the microphone is recorded from the device itself (every sample, at its capture
    time), so the timeline holds the mic as captured, not as the pipeline consumed it.
    """

    def __init__(self, audio: LiveAudio) -> None:
        self.audio = audio
        self.sample_rate = audio.output_rate

    def record_user(self, samples: np.ndarray, sample_rate: int, t_end: float) -> None:
        pass

    def play(self, samples: np.ndarray, sample_rate: int, t: float) -> float:
        """Queue agent audio; returns the session time its first sample will be heard (device latency included).
        ``t`` is ignored: live audio plays as soon as the speaker is free."""
        return self.audio.play(samples, sample_rate).heard_at

    def play_chunk(self, samples: np.ndarray, sample_rate: int) -> PlayedChunk:
        """Like play(), but returns the chunk, whose ``played_samples`` is final after stop()."""
        return self.audio.play(samples, sample_rate)

    def stop(self, t: float | None = None) -> float:
        """Drop what has not been handed to the device; returns the session time playback falls silent.
        ``last_stop`` has the details (the cut chunks and their played samples)."""
        return self.audio.stop().t_silent

    @property
    def last_stop(self) -> StopReport | None:
        return self.audio.last_stop

    def played_until(self) -> float:
        return self.audio.played_until()

    def agent_audible(self, t0: float, t1: float | None = None, tail_s: float = 0.0) -> bool:
        return self.audio.agent_audible(t0, t1, tail_s)

    def playback_log(self) -> list[PlayedChunk]:
        return self.audio.playback_log()

    def use_clock(self, clock: Any) -> None:
        self.audio.use_clock(clock)

    def track(self, name: str) -> np.ndarray:
        return self.audio.track(name, self.sample_rate)

    def timeline(self) -> np.ndarray:
        return self.audio.timeline(self.sample_rate)

    def close(self) -> None:
        self.audio.close()


# ---- Hydra entry points: io.source and io.sink are built separately, but must share one LiveAudio ----------------
_SHARED: dict[tuple, LiveAudio] = {}


def _shared(settings: dict[str, Any]) -> LiveAudio:
    key = tuple(sorted((k, str(v)) for k, v in settings.items()))
    with _SHARED_LOCK:
        audio = _SHARED.get(key)
        if audio is None or audio._closed.is_set():
            audio = _SHARED[key] = LiveAudio(**settings)
            audio._shared_key = key
        return audio


def _forget(audio: LiveAudio) -> None:
    with _SHARED_LOCK:
        key = getattr(audio, "_shared_key", None)
        if key is not None and _SHARED.get(key) is audio:
            del _SHARED[key]


def live_source(**settings: Any) -> LiveSource:
    """``io.source`` of io=live (``io.list_devices=true`` is handled before anything is built: fern.app)."""
    return _shared(settings).source


def live_sink(**settings: Any) -> LiveSink:
    """``io.sink`` of io=live: the same LiveAudio as the source built from the same settings."""
    return _shared(settings).sink


# ---- config schema (found by fern.config) ----------------------------------------------------------------------------
@dataclass
class LiveSettings:
    input_device: Optional[str] = "${..input_device}"
    output_device: Optional[str] = "${..output_device}"
    device_rate: Optional[int] = "${..device_rate}"  # type: ignore[assignment]
    sample_rate: int = 16000
    output_rate: int = 24000
    block_ms: int = "${..block_ms}"  # type: ignore[assignment]
    device_block_ms: float = "${..device_block_ms}"  # type: ignore[assignment]
    input_block_ms: Optional[float] = "${..input_block_ms}"  # type: ignore[assignment]
    input_latency_ms: Optional[float] = "${..input_latency_ms}"  # type: ignore[assignment]
    output_latency_ms: Optional[float] = "${..output_latency_ms}"  # type: ignore[assignment]
    echo: str = "${..echo}"
    echo_reference_lead_ms: float = "${..echo_reference_lead_ms}"  # type: ignore[assignment]
    echo_bypass_margin_db: Optional[float] = "${..echo_bypass_margin_db}"  # type: ignore[assignment]
    half_duplex: bool = "${..half_duplex}"  # type: ignore[assignment]
    half_duplex_tail_ms: float = "${..half_duplex_tail_ms}"  # type: ignore[assignment]
    max_duration_s: Optional[float] = "${..max_duration_s}"  # type: ignore[assignment]


@dataclass
class LiveSourceConfig(LiveSettings):
    _target_: str = "fern.io.live.live_source"


@dataclass
class LiveSinkConfig(LiveSettings):
    _target_: str = "fern.io.live.live_sink"


@dataclass
class LiveIOConfig:
    input_device: Optional[str] = None  # null: system default; an index; or a case-insensitive part of the name
    output_device: Optional[str] = None
    device_rate: Optional[int] = None  # null: each device's default rate (audio is resampled to/from the stages)
    block_ms: int = 20  # blocks the pipeline gets (at 16 kHz)
    device_block_ms: float = 5.0  # the speaker callback's period (PortAudio's low latency is about two of them)
    input_block_ms: Optional[float] = 10.0  # the microphone callback's period; null: device_block_ms
    input_latency_ms: Optional[float] = None  # null: PortAudio's low-latency default for the device
    output_latency_ms: Optional[float] = None
    echo: str = "aec"  # aec (WebRTC AEC3) | none (headphones); see io.half_duplex
    echo_reference_lead_ms: float = 10.0
    # the raw microphone passes where the echo predicted from the reference is this far below it (AEC3's double-talk
    # suppression hides speech onsets: fern/echo/gate.py); null: always the canceller's output
    echo_bypass_margin_db: Optional[float] = 10.0
    half_duplex: bool = False  # mic ignored (silence) while the agent is heard, plus half_duplex_tail_ms
    half_duplex_tail_ms: float = 250.0
    max_duration_s: Optional[float] = None  # null: until Ctrl-C
    list_devices: bool = False  # print the devices with their rates and exit 0
    output_dir: Optional[str] = None  # null: the Hydra run directory
    source: LiveSourceConfig = field(default_factory=LiveSourceConfig)
    sink: LiveSinkConfig = field(default_factory=LiveSinkConfig)


SCHEMAS: dict[str, dict[str, type]] = {"io": {"live": LiveIOConfig}}
