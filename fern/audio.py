"""Audio file reading/writing and format conversion, with errors that say what is wrong with the input."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from fern.errors import AudioInputError


def to_mono_float32(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) of any numeric dtype -> (n,) float32; channels are averaged."""
    audio = np.asarray(samples)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise AudioInputError(f"expected mono or (samples, channels) audio, got an array of shape {audio.shape}")
    if np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max)
    return audio.astype(np.float32, copy=False)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased), exact for integer rate ratios."""
    if rate_in == rate_out or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(rate_in, rate_out)
    return resample_poly(audio, rate_out // g, rate_in // g).astype(np.float32)


def read_wav(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any soundfile-readable file as mono float32 at ``sample_rate`` (converting channels and rate)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"input audio {path} does not exist")
    if path.stat().st_size == 0:
        raise AudioInputError(f"input audio {path} is empty (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioInputError(f"input audio {path} is not a readable audio file: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioInputError(f"input audio {path} holds no samples")
    mono = to_mono_float32(data)
    if not np.all(np.isfinite(mono)):
        raise AudioInputError(f"input audio {path} contains NaN or infinite samples")
    return resample(mono, int(rate), sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


def float_to_pcm16(frame: np.ndarray) -> bytes:
    return (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
