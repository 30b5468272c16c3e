"""End of turn by silence: the user has finished once VAD reports ``silence_ms`` of non-speech after speech."""

from __future__ import annotations


class SilenceEndpointer:
    def __init__(self, silence_ms: int = 700, min_speech_ms: int = 200, speech_start_ms: int = 60) -> None:
        self.silence_s = silence_ms / 1000
        self.min_speech_s = min_speech_ms / 1000
        self.speech_start_s = speech_start_ms / 1000
        self.reset()

    def reset(self) -> None:
        self._voiced_run_s = 0.0  # consecutive voiced time while not yet in a turn (debounces clicks)
        self._in_turn = False
        self._t_start = 0.0
        self._t_last_voiced = 0.0
        self._speech_s = 0.0

    @property
    def in_turn(self) -> bool:
        return self._in_turn

    def push(self, t_frame_end: float, frame_s: float, is_speech: bool) -> tuple[float, float, float] | None:
        """Feed one VAD decision; returns (t_speech_start, t_last_voiced, t_end) when a turn ends."""
        if not self._in_turn:
            if not is_speech:
                self._voiced_run_s = 0.0
                return None
            self._voiced_run_s += frame_s
            if self._voiced_run_s + 1e-9 >= self.speech_start_s:
                self._in_turn = True
                self._t_start = t_frame_end - self._voiced_run_s
                self._speech_s = self._voiced_run_s
                self._t_last_voiced = t_frame_end
            return None
        if is_speech:
            self._speech_s += frame_s
            self._t_last_voiced = t_frame_end
            return None
        if t_frame_end - self._t_last_voiced + 1e-9 < self.silence_s:
            return None
        turn = (self._t_start, self._t_last_voiced, t_frame_end)
        long_enough = self._speech_s + 1e-9 >= self.min_speech_s
        self.reset()
        return turn if long_enough else None


class SilenceTurnDetector:
    """The seed's rule under the TurnDetector contract: a pause of ``silence_ms`` ends the turn, nothing earlier."""

    needs_transcript = False

    def __init__(self, silence_ms: int = 700, min_speech_ms: int = 200, speech_start_ms: int = 60) -> None:
        from fern.errors import ConfigValueError

        if silence_ms <= 0:
            raise ConfigValueError(f"turn.silence_ms must be > 0, got {silence_ms}")
        self.silence_ms, self.min_speech_ms, self.speech_start_ms = silence_ms, min_speech_ms, speech_start_ms
        self.checkpoints_s = (silence_ms / 1000,)

    def decide(self, state):
        from fern.turn.base import Verdict

        return Verdict(end=True)
