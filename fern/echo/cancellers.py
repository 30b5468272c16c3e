"""Echo cancellers behind one small interface (see fern.echo)."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from fern.errors import ConfigValueError, EchoCancellerError


class EchoCanceller:
    """``process(near, far) -> cleaned near``: float32 mono at ``sample_rate``, equal-length blocks, the output as long
    as the input (see ``_Framed`` for blocks that are not whole frames). Not thread-safe: one thread feeds it."""

    name = "none"
    sample_rate: int

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class NoEchoCanceller(EchoCanceller):
    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return np.asarray(near, np.float32)


class _Framed(EchoCanceller):
    """Feeds the engine whole frames. Samples that do not fill a frame wait for the next call, so the output lags the
    input by ``pending`` samples (< one frame); it is padded with zeros at the front on the first calls, which keeps
    lengths equal. With blocks that are whole frames (10/20 ms blocks at 16 kHz) there is no lag at all."""

    frame_ms = 10

    def __init__(self, sample_rate: int) -> None:
        if (sample_rate * self.frame_ms) % 1000:
            raise ConfigValueError(f"echo cancellation needs a whole number of samples per {self.frame_ms} ms "
                                   f"(got a {sample_rate} Hz stream)")
        self.sample_rate = sample_rate
        self.frame = sample_rate * self.frame_ms // 1000
        self._near = np.zeros(0, np.float32)
        self._far = np.zeros(0, np.float32)
        self._out = np.zeros(0, np.float32)

    def _frames(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # whole frames in, same length out

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near = np.asarray(near, np.float32)
        far = np.asarray(far, np.float32)
        if near.shape != far.shape or near.ndim != 1:
            raise ValueError(f"near {near.shape} and far {far.shape} must be equal-length mono blocks")
        if not self._near.size and near.size % self.frame == 0:
            return self._frames(near, far)  # the common case: no buffering
        self._near = np.concatenate([self._near, near])
        self._far = np.concatenate([self._far, far])
        n = self._near.size // self.frame * self.frame
        if n:
            self._out = np.concatenate([self._out, self._frames(self._near[:n], self._far[:n])])
            self._near, self._far = self._near[n:], self._far[n:]
        if self._out.size < near.size:  # start-up: less than a frame processed so far
            self._out = np.concatenate([np.zeros(near.size - self._out.size, np.float32), self._out])
        out, self._out = self._out[:near.size], self._out[near.size:]
        return out


class WebRtcEchoCanceller(_Framed):
    """WebRTC AEC3 (``pywebrtc-audio``), with its high-pass filter; noise suppression optional (off: the ASR and VAD
    see the microphone as it is, only the echo removed)."""

    name = "webrtc"

    def __init__(self, sample_rate: int = 16000, stream_delay_ms: int = 0, noise_suppression: bool = False) -> None:
        super().__init__(sample_rate)
        try:
            from pywebrtc_audio import AudioProcessor
        except ImportError as exc:
            raise EchoCancellerError("io.echo=aec needs the pywebrtc-audio wheel (WebRTC AEC3): "
                                     "run `bash scripts/setup.sh` or `pip install pywebrtc-audio`") from exc
        self._apm = AudioProcessor(sample_rate=sample_rate, echo_cancellation=True,
                                   noise_suppression=noise_suppression, stream_delay_ms=int(stream_delay_ms))

    def _frames(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return self._apm.process(np.ascontiguousarray(near), np.ascontiguousarray(far))

    def reset(self) -> None:
        self._apm.reset()


def _load_speexdsp() -> ctypes.CDLL:
    for name in (ctypes.util.find_library("speexdsp"), "libspeexdsp.so.1", "libspeexdsp.dylib"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "speex_echo_state_init"):
            break
    else:
        raise EchoCancellerError("SpeexDSP needs libspeexdsp (Debian: apt-get install libspeexdsp1)")
    vp = ctypes.c_void_p
    i16p = ctypes.POINTER(ctypes.c_int16)
    lib.speex_echo_state_init.restype = vp
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_state_destroy.argtypes = [vp]
    lib.speex_echo_cancellation.argtypes = [vp, i16p, i16p, i16p]
    lib.speex_echo_ctl.argtypes = [vp, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_state_reset.argtypes = [vp]
    lib.speex_preprocess_state_init.restype = vp
    lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_preprocess_state_destroy.argtypes = [vp]
    lib.speex_preprocess_ctl.argtypes = [vp, ctypes.c_int, ctypes.c_void_p]
    lib.speex_preprocess_run.argtypes = [vp, i16p]
    return lib


class SpeexEchoCanceller(_Framed):
    """SpeexDSP MDF echo canceller (filter ``tail_ms`` long) followed by its residual echo suppressor (no denoise,
    no AGC)."""

    name = "speex"
    frame_ms = 20
    _SET_SAMPLING_RATE = 24
    _PP_SET_DENOISE = 0
    _PP_SET_ECHO_STATE = 24

    def __init__(self, sample_rate: int = 16000, tail_ms: int = 300, residual_suppression: bool = True) -> None:
        super().__init__(sample_rate)
        self._lib = lib = _load_speexdsp()
        self._tail = sample_rate * tail_ms // 1000
        self._echo = lib.speex_echo_state_init(self.frame, self._tail)
        rate = ctypes.c_int(sample_rate)
        lib.speex_echo_ctl(self._echo, self._SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre = None
        if residual_suppression:
            self._pre = lib.speex_preprocess_state_init(self.frame, sample_rate)
            off = ctypes.c_int(0)
            lib.speex_preprocess_ctl(self._pre, self._PP_SET_DENOISE, ctypes.byref(off))
            lib.speex_preprocess_ctl(self._pre, self._PP_SET_ECHO_STATE, ctypes.c_void_p(self._echo))

    def _frames(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        lib, n = self._lib, self.frame
        rec = _to_i16(near)
        play = _to_i16(far)
        out = np.empty_like(rec)
        p = ctypes.POINTER(ctypes.c_int16)
        for i in range(0, rec.size, n):
            o = out[i:i + n]
            lib.speex_echo_cancellation(self._echo, rec[i:i + n].ctypes.data_as(p), play[i:i + n].ctypes.data_as(p),
                                        o.ctypes.data_as(p))
            if self._pre is not None:
                lib.speex_preprocess_run(self._pre, o.ctypes.data_as(p))
        return out.astype(np.float32) / 32768.0

    def reset(self) -> None:
        self._lib.speex_echo_state_reset(self._echo)

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_pre", None):
            lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if getattr(self, "_echo", None):
            lib.speex_echo_state_destroy(self._echo)
            self._echo = None


def _to_i16(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16))


ECHO_MODES = ("none", "aec", "webrtc")


def make_echo_canceller(mode: str, sample_rate: int = 16000, **options) -> EchoCanceller:
    """``io.echo``: none | aec (= webrtc) | webrtc. SpeexDSP is measured (fern.bench.aec), not offered."""
    if mode == "none":
        return NoEchoCanceller(sample_rate)
    if mode in ("aec", "webrtc"):
        return WebRtcEchoCanceller(sample_rate, **options)
    if mode == "speex":
        raise ConfigValueError("io.echo=speex is not offered: measured here it removed 15.6 dB of echo (AEC3: 59 dB) "
                               "and the agent interrupted or answered its own echo; use io.echo=aec, or "
                               "io.half_duplex=true")
    raise ConfigValueError(f"io.echo={mode!r} is not an echo mode; choose one of {', '.join(ECHO_MODES)}")


def erle_db(mic: np.ndarray, cleaned: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Echo return loss enhancement: how much quieter (dB) the cleaned signal is than the microphone, over ``mask``
    (the samples where only the far end is active). Higher is better; 0 dB means nothing was removed."""
    if mask is not None:
        mic, cleaned = mic[mask], cleaned[mask]
    p_mic = float(np.mean(np.square(mic, dtype=np.float64)))
    p_out = float(np.mean(np.square(cleaned, dtype=np.float64)))
    return 10.0 * np.log10(max(p_mic, 1e-20) / max(p_out, 1e-20))
