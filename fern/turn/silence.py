"""End of turn by silence (the seed's baseline): a pause of ``silence_ms`` ends the turn, nothing earlier."""

from __future__ import annotations

from dataclasses import dataclass

from fern.errors import ConfigValueError
from fern.turn.base import PauseState, Verdict


@dataclass
class SilenceTurnConfig:
    _target_: str = "fern.turn.silence.SilenceTurnDetector"
    silence_ms: int = 700
    min_speech_ms: int = 200  # shorter voiced stretches are clicks and coughs, not turns
    speech_start_ms: int = 60  # voiced time before a turn starts


SCHEMAS = {"turn": {"silence": SilenceTurnConfig}}


class SilenceTurnDetector:
    needs_transcript = False

    def __init__(self, silence_ms: int = SilenceTurnConfig.silence_ms,
                 min_speech_ms: int = SilenceTurnConfig.min_speech_ms,
                 speech_start_ms: int = SilenceTurnConfig.speech_start_ms) -> None:
        if silence_ms <= 0 or min_speech_ms < 0 or speech_start_ms <= 0:
            raise ConfigValueError(f"turn.silence_ms and turn.speech_start_ms must be > 0 and turn.min_speech_ms >= 0, "
                                   f"got {silence_ms}, {speech_start_ms}, {min_speech_ms}")
        self.silence_ms, self.min_speech_ms, self.speech_start_ms = silence_ms, min_speech_ms, speech_start_ms
        self.checkpoints_s = (silence_ms / 1000,)

    def decide(self, state: PauseState) -> Verdict:
        return Verdict(end=True)
