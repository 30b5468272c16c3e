"""What a session leaves on disk: transcript.json, turns.csv, timeline.wav, agent.wav, config.yaml; and the round-trip
quality check that runs before they are written."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fern.metrics import METRICS
from fern.observers.record import TurnRecorder
from fern.protocols import RecordingSink, SpeechRecognizer


class RoundTripEvaluator:
    """TTS quality without references: the ASR transcribes what the agent said and we compare it with what it meant
    to say. Runs when the session is over, so it cannot disturb the latency figures."""

    def __init__(self, recorder: TurnRecorder, sink: RecordingSink, asr: SpeechRecognizer) -> None:
        self.recorder, self.sink, self.asr = recorder, sink, asr

    def on_event(self, event: object) -> None:
        pass

    def close(self) -> None:
        from fern.audio import resample
        from fern.quality import word_error_rate

        agent = self.sink.track("agent")
        rate = self.sink.sample_rate
        for rec in self.recorder.records:
            if rec.error or rec.t_first_agent_sample is None or not rec.agent_text:
                continue  # an interrupted reply was cut on purpose: its WER would measure the interruption
            speech = agent[int(rec.t_first_agent_sample * rate):int(rec.t_last_agent_sample * rate)]
            heard = self.asr.transcribe(resample(speech, rate, self.asr.sample_rate))
            rec.quality["round_trip_text"] = heard
            rec.quality["round_trip_wer"] = word_error_rate(rec.agent_text, heard)


class OutputWriter:
    def __init__(self, out_dir: Path, recorder: TurnRecorder, sink: RecordingSink,
                 config: dict[str, Any] | None = None) -> None:
        self.out_dir, self.recorder, self.sink, self.config = Path(out_dir), recorder, sink, config
        self.paths: dict[str, Path] = {}

    def on_event(self, event: object) -> None:
        pass

    def close(self) -> None:
        from fern.audio import write_wav

        self.out_dir.mkdir(parents=True, exist_ok=True)
        records = self.recorder.records
        transcript = self.out_dir / "transcript.json"
        transcript.write_text(json.dumps({"turns": [r.to_dict() for r in records]}, indent=2, allow_nan=True))
        table = self.out_dir / "turns.csv"
        with table.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["turn_id", "user_text", "agent_text", "backend", "error", *(m.name for m in METRICS)])
            for r in records:
                m = r.metrics()
                writer.writerow([r.turn_id, r.user_text, r.agent_text, r.backend, r.error or "",
                                 *(m[metric.name] for metric in METRICS)])
        self.paths = {"transcript": transcript, "turns": table,
                      "timeline": write_wav(self.out_dir / "timeline.wav", self.sink.timeline(), self.sink.sample_rate),
                      # the agent's side alone: what the round-trip quality check listens to
                      "agent": write_wav(self.out_dir / "agent.wav", self.sink.track("agent"), self.sink.sample_rate)}
        if self.config is not None:
            from omegaconf import OmegaConf

            self.paths["config"] = self.out_dir / "config.yaml"
            self.paths["config"].write_text(OmegaConf.to_yaml(OmegaConf.create(self.config)))
