"""A real Hydra multirun: one MLflow run per sweep member, named by its overrides, each with its own outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fern.audio import write_wav
from fern.paths import PROJECT_ROOT
from fern.tts.espeak import speak_conversation

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)


def test_multirun_logs_one_mlflow_run_per_member(tmp_path):
    wav = write_wav(tmp_path / "one_question.wav", speak_conversation(["What is the capital of France?"], gap_s=1.0),
                    16000)
    db = tmp_path / "sweep.db"
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), "-m", "turn.silence_ms=500,900", "turn=silence", "vad=webrtc",
         f"io.input={wav}",
         f"tracking.tracking_uri=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "llm.max_new_tokens=12",
         "round_trip_eval=false"],
        capture_output=True, text=True, timeout=900, cwd="/", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    # the members; the sweep's own parent run (tagged fern.sweep) is tested in tests/tracking/test_sweep_parent.py
    runs = client.search_runs([client.get_experiment_by_name("fern").experiment_id], "tags.`fern.sweep` IS NULL")
    by_name = {r.info.run_name: r for r in runs}
    # paths and tracking settings are excluded from the names: they say where, not what, was run
    names = {ms: f"llm.max_new_tokens=12,round_trip_eval=False,turn.silence_ms={ms},turn=silence,vad=webrtc"
             for ms in (500, 900)}
    assert set(by_name) == set(names.values())
    delays = {}
    for ms, name in names.items():
        assert by_name[name].info.status == "FINISHED"
        delays[ms] = by_name[name].data.metrics["median_endpoint_delay_ms"]
    # the swept value really changed the behaviour it controls
    assert 480 <= delays[500] <= 700 < 880 <= delays[900] <= 1100
    for job, ms in enumerate((500, 900)):
        transcript = json.loads((tmp_path / "sweep" / f"{job}_{names[ms]}" / "transcript.json").read_text())
        assert len(transcript["turns"]) == 1

    # the comparison tool puts the two members side by side, the swept setting as a column
    from fern.tracking.compare import comparison, load_runs

    header, rows = comparison(load_runs(f"sqlite:///{db}", "fern", 10), sort="median_endpoint_delay_ms")
    assert [row[header.index("turn.silence_ms")] for row in rows] == ["500", "900"]
    assert "llm.max_new_tokens" not in header  # equal in both runs: not a difference
    printed = subprocess.run([sys.executable, str(PROJECT_ROOT / "tracking" / "compare.py"), "--tracking-uri",
                              f"sqlite:///{db}"], capture_output=True, text=True, timeout=120, cwd="/")
    assert printed.returncode == 0 and printed.stdout.count("turn.silence_ms=") == 2, printed.stderr
