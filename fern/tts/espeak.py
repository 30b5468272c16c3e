"""espeak-ng as a streaming TTS: robotic, but instant on any CPU; for CPU-only runs and to synthesise test speech."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fern.errors import FernError
from fern.events import CancelToken

WAV_HEADER_BYTES = 44


@dataclass
class EspeakConfig:
    _target_: str = "fern.tts.espeak.EspeakSynthesizer"
    voice: str = "en-us"
    words_per_minute: int = 175
    chunk_ms: int = 200


SCHEMAS = {"tts": {"espeak": EspeakConfig}}


def espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FernError("espeak-ng is not installed: `apt-get install espeak-ng` (the README's set-up does it)")
    return binary


class EspeakSynthesizer:
    """Streams espeak-ng's stdout as it is produced, in ``chunk_ms`` blocks."""

    sample_rate = 22050  # espeak-ng's native rate; read back from each WAV header below

    def __init__(self, voice: str = EspeakConfig.voice, words_per_minute: int = EspeakConfig.words_per_minute,
                 chunk_ms: int = EspeakConfig.chunk_ms) -> None:
        self.binary = espeak_binary()
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.chunk_ms = chunk_ms
        probe = subprocess.run([self.binary, "-v", voice, "-q", "x"], capture_output=True, text=True)
        if probe.returncode != 0 or "not found" in probe.stderr.lower():
            raise FernError(f"tts.voice={voice} is not an espeak-ng voice (list them with `espeak-ng --voices`)")

    def stream(self, text: str, cancel: CancelToken | None = None) -> Iterator[np.ndarray]:
        text = text.strip()
        if not text:
            return
        process = subprocess.Popen(
            # "--": text such as "- apples" or "-5 degrees" (LLM bullet points) is text, not an option
            [self.binary, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout", "--", text],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert process.stdout is not None
        try:
            header = process.stdout.read(WAV_HEADER_BYTES)
            if len(header) < WAV_HEADER_BYTES or header[:4] != b"RIFF":
                raise FernError(f"espeak-ng produced no audio for {text[:40]!r}")
            self.sample_rate = struct.unpack_from("<I", header, 24)[0]
            chunk_bytes = 2 * self.sample_rate * self.chunk_ms // 1000
            while not (cancel and cancel.cancelled):
                data = process.stdout.read(chunk_bytes)
                if not data:
                    break
                if len(data) % 2:
                    data += process.stdout.read(1)
                yield np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        finally:
            process.kill()
            process.wait()

    def synthesize(self, text: str) -> np.ndarray:
        chunks = list(self.stream(text))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def speak_conversation(lines: list[str], sample_rate: int = 16000, gap_s: float = 6.0, lead_s: float = 0.5,
                       voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """A user's side of a conversation: each line spoken by espeak-ng, separated by ``gap_s`` of silence (time for
    the agent to answer). Used for the bundled demo and for end-to-end tests."""
    from fern.audio import resample

    synth = EspeakSynthesizer(voice=voice, words_per_minute=words_per_minute)
    parts = [np.zeros(int(lead_s * sample_rate), np.float32)]
    for line in lines:
        speech = synth.synthesize(line)
        parts += [resample(speech, synth.sample_rate, sample_rate), np.zeros(int(gap_s * sample_rate), np.float32)]
    return np.concatenate(parts)
