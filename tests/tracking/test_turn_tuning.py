"""Turn tuning: the objective on a labelled espeak set, and an Optuna sweep that prints the best trial as a command."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf
from sweep_helpers import parents_and_children, run

from fern.tune import LabelledTurn, score, turn_benchmark


def test_score_matches_ends_to_labelled_turns():
    turns = [LabelledTurn(1.0, 3.0, ((1.8, 2.4),)), LabelledTurn(6.0, 7.0), LabelledTurn(10.0, 11.0)]
    # an end inside turn 0's pause (a cut-off), then its real end 0.5 s late; turn 1 ends 0.7 s late; turn 2 never
    result = score(turns, [2.2, 3.5, 7.7])
    assert result.cutoff_rate == pytest.approx(1 / 3)
    assert result.missed_rate == pytest.approx(1 / 3)
    assert result.delays_ms == pytest.approx([500.0, 700.0])
    assert result.median_delay_ms == pytest.approx(600.0)
    assert math.isnan(score(turns, []).median_delay_ms) and score(turns, []).missed_rate == 1.0


def test_silence_threshold_trades_delay_for_cutoffs(compose):
    """The espeak set has pauses of 0.4-0.8 s inside three of its six turns."""
    silence = ["turn=silence", "vad=webrtc", "tune.turn_set=espeak"]
    short_delay, short_cut = turn_benchmark(compose(["turn.silence_ms=300", *silence]))
    long_delay, long_cut = turn_benchmark(compose(["turn.silence_ms=1000", *silence]))
    assert short_cut == pytest.approx(0.5)  # every turn with a pause was cut off
    assert long_cut == 0.0
    assert 300 <= short_delay < 600 and 1000 <= long_delay < 1300
    assert short_delay < long_delay


def test_turn_tuning_sweep_prints_the_best_command(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(["sweep=turn_tuning", "tune.turn_set=espeak", "hydra.sweeper.optuna.n_trials=6",
                  f"tracking.tracking_uri={uri}",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}"], module="fern.tune", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    best = results.best[0]
    assert best.command.startswith("python run.py ") and "turn.silence_ms=" in best.command
    assert "sweep=" not in best.command and "tracking.tracking_uri" in best.command
    assert best.command in result.stdout
    parents, children = parents_and_children(uri)
    assert len(parents) == 1 and parents[0].data.params["sweep.params.turn.silence_ms"] == "range(200,1500,20)"
    kids = children[parents[0].info.run_id]
    assert len(kids) == 6 and all(k.info.status == "FINISHED" for k in kids)
    objectives = {k.data.params["turn.silence_ms"] + "/" + k.data.params["vad.aggressiveness"] + "/"
                  + k.data.params["vad.frame_ms"]: k.data.metrics["objective"] for k in kids}
    # the best trial is the one with the lowest weighted objective, and its number is delay + 3000 x cut-off rate
    assert best.objective[0] == pytest.approx(min(objectives.values()))
    delay, cutoff = best.raw_values
    assert best.objective[0] == pytest.approx(delay + 3000.0 * cutoff)
    key = f"{best.params['turn.silence_ms']}/{best.params['vad.aggressiveness']}/{best.params['vad.frame_ms']}"
    assert objectives[key] == pytest.approx(best.objective[0])
    assert (tmp_path / "sweep" / "comparison.csv").is_file()
