"""Tune the turn detector: endpoint delay against false cut-offs, one Hydra job per setting.

    .venv/bin/python -m fern.tune sweep=turn_tuning                     # Optuna over conf/sweep/turn_tuning.yaml
    .venv/bin/python -m fern.tune turn=silence vad=webrtc turn.silence_ms=500                # one setting
    .venv/bin/python -m fern.tune -m turn=silence vad=webrtc turn.silence_ms=300,500,700,900 # a plain grid

The task composes the same config as run.py (conf/run.yaml), so every ``turn.*``/``vad.*`` preset and override
works here, and each trial is an MLflow child run of the sweep. It returns ``(median endpoint delay ms, false cut-off
rate)``; the sweep combines them (``hydra.sweeper.optuna.weights``) and prints the best trial as a ready ``run.py``
command.

``turn_benchmark(cfg)`` is the one function that says how good a turn config is: on the training split of
fern.bench.turns' labelled real-speech set (``tune.turn_set=asterisk``, the default; the held-out split stays for
the benchmark's final figures), or on a six-turn espeak-ng set built here in seconds (``tune.turn_set=espeak``).
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hydra
from omegaconf import DictConfig

from fern.config import register
from fern.paths import CONF_DIR

log = logging.getLogger("fern.tune")


@dataclass(frozen=True)
class LabelledTurn:
    t_start: float  # first speech sample of the turn (s)
    t_end: float  # last speech sample: the user is done here
    pauses: tuple[tuple[float, float], ...] = ()  # silences inside the turn: ending the turn there cuts the user off


@dataclass(frozen=True)
class TurnSet:
    name: str
    audio: Any  # float32 mono
    sample_rate: int
    turns: tuple[LabelledTurn, ...]


@dataclass
class TurnScore:
    median_delay_ms: float  # detected end - true end, over the turns whose end was detected
    cutoff_rate: float  # share of turns ended early at least once (inside a pause of the user's)
    missed_rate: float  # share of turns whose end was never detected before the next turn began
    delays_ms: list[float] = field(default_factory=list)


# ---- the seam --------------------------------------------------------------------------------------------------
def turn_benchmark(cfg: DictConfig) -> tuple[float, float]:
    """(median endpoint delay in ms, false cut-off rate) of ``cfg.turn`` (with ``cfg.vad``) on the labelled turn set.

    Detectors are scored on audio and silence only (tuning thresholds of detectors that read words is the turn
    benchmark's calibration, fern.bench.turns)."""
    from fern.errors import ConfigValueError

    if cfg.tune.turn_set == "espeak":
        score = score_turns(cfg, espeak_turn_set(int(cfg.vad.sample_rate)))
        return score.median_delay_ms, score.cutoff_rate
    if cfg.tune.turn_set != "asterisk":
        raise ConfigValueError(f"tune.turn_set={cfg.tune.turn_set!r}: use asterisk or espeak")
    return asterisk_score(cfg)


def asterisk_score(cfg: DictConfig) -> tuple[float, float]:
    """fern.bench.turns' cases (training split): a cut-off is a turn ended inside an inserted mid-sentence pause;
    the delay is measured on complete utterances, from the last word to the end of the turn."""
    from fern.app import build
    from fern.bench.turn_data import load
    from fern.bench.turns import DEFAULT_CACHE

    vad, detector = build(cfg.vad, "vad"), build(cfg.turn, "turn")
    delays, cut, paused = [], 0, 0
    for case, audio in load(DEFAULT_CACHE, split="train", progress=False):
        ends = detect_ends(vad, detector, audio, int(cfg.vad.sample_rate))
        if case.kind == "pause":
            paused += 1
            cut += any(case.pause_start_s <= e < case.pause_end_s + 1e-9 for e in ends)
        else:
            after = [e for e in ends if e >= case.speech_end_s]
            if after:
                delays.append(1000.0 * (after[0] - case.speech_end_s))
    return (statistics.median(delays) if delays else math.nan), cut / max(paused, 1)


# ---- a tiny labelled set from espeak-ng (pauses inside turns, long gaps between them) ---------------------------
# Each turn is a list of phrases; the numbers between phrases are the user's pauses inside the turn (s).
ESPEAK_TURNS: tuple[tuple[Any, ...], ...] = (
    ("What is the weather like", 0.6, "in Paris tomorrow?"),
    ("Tell me a joke.",),
    ("I would like to book a table", 0.5, "for two people", 0.8, "at eight."),
    ("How far away is the moon?",),
    ("Can you remind me", 0.4, "to call my mother", 0.7, "tonight?"),
    ("Play some music.",),
)
GAP_S = 3.0  # between turns: time for an agent to answer


@functools.lru_cache(maxsize=4)
def espeak_turn_set(sample_rate: int = 16000, gap_s: float = GAP_S) -> TurnSet:
    import numpy as np

    from fern.audio import resample
    from fern.tts.espeak import EspeakSynthesizer

    synth = EspeakSynthesizer(words_per_minute=160)
    parts = [np.zeros(int(0.5 * sample_rate), np.float32)]
    t = 0.5
    turns = []
    for turn in ESPEAK_TURNS:
        start, pauses = None, []
        for piece in turn:
            if isinstance(piece, float):
                pauses.append((t, t + piece))
                parts.append(np.zeros(round(piece * sample_rate), np.float32))
                t += round(piece * sample_rate) / sample_rate
                continue
            speech = trim(resample(synth.synthesize(piece), synth.sample_rate, sample_rate))
            start = t if start is None else start
            parts.append(speech)
            t += speech.size / sample_rate
        turns.append(LabelledTurn(start, t, tuple(pauses)))
        parts.append(np.zeros(int(gap_s * sample_rate), np.float32))
        t += int(gap_s * sample_rate) / sample_rate
    return TurnSet("espeak_mini", np.concatenate(parts), sample_rate, tuple(turns))


def trim(audio: Any, threshold: float = 0.01) -> Any:
    """Speech without espeak's leading/trailing silence, so the labels are where the voice really starts and ends."""
    import numpy as np

    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0]:loud[-1] + 1] if loud.size else audio[:0]


# ---- running a detector over the set ----------------------------------------------------------------------------
def detect_ends(vad: Any, turn: Any, audio: Any, rate: int) -> list[float]:
    """Times at which ``turn`` ends a turn, fed frame by frame as the live listener feeds it (fern.turn.base: the
    segmenter finds pauses, the detector judges each checkpoint)."""
    from fern.errors import ConfigValueError
    from fern.turn.base import PauseState
    from fern.turn.segmenter import Checkpoint, Segmenter

    if getattr(turn, "needs_transcript", False):
        raise ConfigValueError("this turn detector reads transcripts: tune it on the turn benchmark (fern.bench.turns)")
    frame_len = rate * vad.frame_ms // 1000
    frame_s = frame_len / rate
    segmenter = Segmenter(turn.checkpoints_s, turn.speech_start_ms, turn.min_speech_ms)
    ends = []
    for k in range(audio.size // frame_len):
        t = (k + 1) * frame_s
        event = segmenter.push(t, frame_s, vad.is_speech(audio[k * frame_len:(k + 1) * frame_len]))
        if isinstance(event, Checkpoint):
            state = PauseState(audio=audio[int(event.t_start * rate):int(t * rate)], sample_rate=rate,
                               silence_s=event.silence_s)
            if (turn.decide(state).end or event.last) and segmenter.end_turn(t) is not None:
                ends.append(t)
    return ends


def score(turns: Sequence[LabelledTurn], ends: Sequence[float]) -> TurnScore:
    """Match detected ends to labelled turns: an end inside a turn (before its last word) is a cut-off; the first end
    after the turn's last word and before the next turn's start is its endpoint."""
    delays, cut, missed = [], 0, 0
    for i, turn in enumerate(turns):
        next_start = turns[i + 1].t_start if i + 1 < len(turns) else math.inf
        if any(turn.t_start < e < turn.t_end for e in ends):
            cut += 1
        after = [e for e in ends if turn.t_end <= e < next_start]
        if after:
            delays.append(1000.0 * (after[0] - turn.t_end))
        else:
            missed += 1
    n = max(len(turns), 1)
    return TurnScore(statistics.median(delays) if delays else math.nan, cut / n, missed / n, delays)


def score_turns(cfg: DictConfig, turn_set: TurnSet) -> TurnScore:
    from fern.app import build

    vad = build(cfg.vad, "vad")
    detector = build(cfg.turn, "turn")
    return score(turn_set.turns, detect_ends(vad, detector, turn_set.audio, turn_set.sample_rate))


# ---- the Hydra task ---------------------------------------------------------------------------------------------
def tune_task(cfg: DictConfig) -> tuple[float, float]:
    delay, cutoff = turn_benchmark(cfg)
    objective = combined(delay, cutoff)
    print(f"median endpoint delay {delay:.0f} ms, false cut-off rate {cutoff:.2f}"
          + (f", objective {objective:.1f}" if objective is not None else ""))
    if cfg.tracking.enabled:
        from omegaconf import OmegaConf

        from fern.app import run_name_for
        from fern.tracking.mlflow_tracker import MlflowTracker, flatten

        tracker = MlflowTracker(cfg.tracking.experiment, cfg.tracking.tracking_uri, run_name_for(cfg),
                                tags={"task": "turn_tuning"})
        try:
            tracker.log_params(flatten({"turn": OmegaConf.to_container(cfg.turn, resolve=True),
                                        "vad": OmegaConf.to_container(cfg.vad, resolve=True)}))
            metrics = {"median_endpoint_delay_ms": delay, "cutoff_rate": cutoff}
            if objective is not None:
                metrics["objective"] = objective
            tracker.log_metrics(metrics)
        finally:
            tracker.close("FINISHED")
    return delay, cutoff


def combined(delay: float, cutoff: float) -> float | None:
    """The sweep's weighted objective for this trial, when the sweep defines weights (logged for the table)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    weights = (HydraConfig.get().sweeper.get("optuna") or {}).get("weights")
    if not weights or len(weights) != 2:
        return None
    return float(weights[0]) * delay + float(weights[1]) * cutoff


register()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")
def main(cfg: DictConfig) -> tuple[float, float]:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        return tune_task(cfg)
    except Exception as exc:
        from fern.errors import FernError

        if isinstance(exc, FernError):
            import sys

            print(f"fern: error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
