"""MLflow: per-turn metrics with the turn as step, the run's medians, and the output files as artifacts."""

from __future__ import annotations

from fern.metrics import summarise
from fern.observers.outputs import OutputWriter
from fern.observers.record import TurnRecorder
from fern.tracking.mlflow_tracker import MlflowTracker


class MlflowObserver:
    """Logs when the session is over (a SQLite write per turn would stall the event loop mid-conversation); it runs
    after the round-trip check and the output files, so both are in the run."""

    def __init__(self, tracker: MlflowTracker, recorder: TurnRecorder, outputs: OutputWriter | None = None) -> None:
        self.tracker, self.recorder, self.outputs = tracker, recorder, outputs

    def on_event(self, event: object) -> None:
        pass

    def close(self) -> None:
        for rec in self.recorder.records:
            self.tracker.log_metrics(rec.metrics(), step=rec.turn_id)
        self.tracker.log_metrics(summarise(self.recorder.records))
        if self.outputs is not None:
            self.tracker.log_files(list(self.outputs.paths.values()))
