"""A two-member sweep through the Ray launcher on a local Ray instance, both members logging to one MLflow server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from sweep_helpers import SHORT, env, one_question_wav, parents_and_children, run

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier

ray = pytest.importorskip("ray", reason="ray is in the test extra (pip install -e '.[test]'): run scripts/setup.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real tracking server with a SQL (SQLite) backend: what every machine of a cluster would log to."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", (tmp_path / "server_artifacts").as_uri()],
        stdout=subprocess.DEVNULL, stderr=log, env=env())
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
        else:
            pytest.fail("mlflow server did not come up in 2 minutes")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_two_members_on_local_ray_log_to_one_server(tmp_path, mlflow_server):
    wav = one_question_wav(tmp_path / "q.wav")
    result = run(["-m", "turn.silence_ms=500,900", "turn=silence", "vad=webrtc", "hydra/launcher=ray",
                  "hydra.launcher.ray.init.num_cpus=2",
                  f"io.input={wav}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *SHORT],
                 MLFLOW_TRACKING_URI=mlflow_server, RAY_DEDUP_LOGS="0")
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    out = result.stdout + result.stderr
    assert "Ray: launching 2 members" in out
    assert "run_member pid=" in out  # the members' output came back from Ray worker processes
    parents, children = parents_and_children(mlflow_server)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["sweep.launcher"].endswith("RayLauncher")
    kids = children[parents[0].info.run_id]
    assert sorted(k.data.params["turn.silence_ms"] for k in kids) == ["500", "900"]
    assert all(k.info.status == "FINISHED" and k.data.metrics["median_voice_to_voice_ms"] > 0 for k in kids)
    # the members ran in processes other than the launcher's (hydra job dirs written by the workers)
    for job, ms in enumerate((500, 900)):
        assert (tmp_path / "sweep" / f"{job}_llm.max_new_tokens=12,round_trip_eval=False,turn.silence_ms={ms},"
                f"turn=silence,vad=webrtc" / "transcript.json").is_file()
    # the parent's artifacts went through the server
    from mlflow.tracking import MlflowClient

    names = {a.path for a in MlflowClient(mlflow_server).list_artifacts(parents[0].info.run_id)}
    assert {"comparison.csv", "latency_breakdown.png"} <= names
