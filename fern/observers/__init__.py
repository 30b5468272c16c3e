"""Observers of a session's events: the turn record, the console line, the output files, MLflow."""

from fern.observers.console import ConsoleObserver
from fern.observers.mlflow import MlflowObserver
from fern.observers.outputs import OutputWriter, RoundTripEvaluator
from fern.observers.record import TurnCompleted, TurnRecorder

__all__ = ["ConsoleObserver", "MlflowObserver", "OutputWriter", "RoundTripEvaluator", "TurnCompleted",
           "TurnRecorder"]
