"""fern.bench.turns on a handful of real prompts: the set builds, detectors run through the Segmenter, the table,
the curve and MLflow come out, and replaying recorded scores equals calling decide() the way the listener does."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.models  # real turn-taking models on real speech: the full tier

PROMPTS = ["conf-getconfno", "vm-enter-num-to-call", "vm-reenterpassword", "agent-pass", "pbx-invalid"]


@pytest.fixture(scope="module")
def mini_set(tmp_path_factory):
    from fern.bench.turn_data import load

    cache = tmp_path_factory.mktemp("turns-cache")
    return cache, load(cache, "all", progress=False, prompts=PROMPTS)


def test_the_set_has_complete_and_paused_cases_cut_at_word_boundaries(mini_set):
    from fern.bench.turn_data import CONTINUATIONS, _normalize

    _, cases = mini_set
    kinds = {c.kind for c, _ in cases}
    assert kinds == {"complete", "pause"} and {c.split for c, _ in cases} <= {"train", "test"}
    for case, audio in cases:
        assert audio.dtype == np.float32 and case.speech_end_s < audio.size / 16000 - 3.0
        if case.kind == "pause":
            assert 0.4 <= case.pause_end_s - case.pause_start_s <= 1.5
            gap = audio[int(case.pause_start_s * 16000) + 160:int(case.pause_end_s * 16000) - 160]
            assert np.std(gap) < 1e-3  # only the noise floor in the inserted pause
            assert _normalize(case.text_before_pause.split()[-1]) in CONTINUATIONS, case.text_before_pause


def test_bench_runs_and_logs_to_mlflow(mini_set, tmp_path, monkeypatch):
    import mlflow

    from fern.bench.turns import main

    cache, _ = mini_set
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "out"
    assert main(["--cache", str(cache), "--split", "all", "--detectors", "silence,smart_turn", "--out", str(out),
                 "--override", "++llm.api_key=sk-not-for-mlflow"]) == 0
    assert (out / "turns_curve.png").stat().st_size > 10_000
    table = (out / "turns_table.md").read_text()
    assert "silence 700 ms" in table and "smart_turn" in table
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["fern-bench-turns"], output_format="list")[0]
    metrics = run.data.metrics
    # silence 700 ms ends 22 frames of 32 ms after the last voiced frame, with no compute
    assert metrics["silence_700_ms.delay_median_ms"] == pytest.approx(704, abs=1)
    assert metrics["silence_300_ms.cutoff_pause"] == 1.0  # every inserted pause is >= 0.4 s
    assert 0 < metrics["smart_turn.compute_median_ms"] < 2000
    assert run.data.params["overrides"] == "++llm.api_key=***"  # a secret on the command line stays out of MLflow
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"turns_curve.png", "turns_table.md", "turns_results.json"} <= artifacts


def test_replaying_recorded_scores_equals_deciding_live(mini_set, smart_turn_model):
    """The bench records scores at every checkpoint and replays the rule; the listener calls decide() and stops at
    the first end. Both must end the same turn at the same pause."""
    from fern.bench.turns import first_end, run_case, vad_decisions
    from fern.turn.base import PauseState
    from fern.turn.segmenter import Checkpoint, Segmenter, SpeechStart
    from fern.turn.smart_turn import SmartTurnDetector
    from fern.vad.silero import SileroVad

    from .conftest import SILERO

    vad = SileroVad(str(SILERO))
    _, cases = mini_set
    for threshold in (0.5,):
        det = SmartTurnDetector(smart_turn_model, threshold=threshold, min_silence_ms=192, step_ms=384,
                                max_silence_ms=1600)
        for case, audio in cases:
            speech = vad_decisions(vad, audio)
            replayed = first_end(run_case(det, audio, speech, 0.032, 16000), det.rule, None)
            seg, live, t_start = Segmenter(det.checkpoints_s, det.speech_start_ms, det.min_speech_ms), None, 0.0
            for i, s in enumerate(speech):
                event = seg.push((i + 1) * 0.032, 0.032, s)
                if isinstance(event, SpeechStart):
                    t_start = event.t
                if isinstance(event, Checkpoint):
                    a = int(max(0.0, t_start - 0.3) * 16000)
                    verdict = det.decide(PauseState(audio[a:int(round(event.t * 16000))], 16000, event.silence_s))
                    if verdict.end or event.last:
                        live = event
                        seg.end_turn(event.t)
                        break
            assert live is not None and replayed is not None
            assert (replayed.t, replayed.t_last_voiced) == pytest.approx((live.t, live.t_last_voiced)), case.id
