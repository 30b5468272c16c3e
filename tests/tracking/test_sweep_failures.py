"""A member that fails is recorded FAILED with its error, and the sweep goes on.

Hydra alone ends a multirun at a member's ``sys.exit`` (run.py exits 2 on a FernError) and re-raises a member's
exception once its batch is done; FERN's sweeper and callback must not.
"""

from __future__ import annotations

import textwrap

import pytest
from sweep_helpers import SHORT, client, one_question_wav, parents_and_children, run

from fern.paths import CONF_DIR, models_dir

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier


def test_failing_members_are_failed_runs_and_the_sweep_goes_on(tmp_path):
    wav = one_question_wav(tmp_path / "q.wav")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good_llm = models_dir() / "smollm2"
    # one at a time: the good baseline, a missing input (fails before any run is opened), a missing model (fails
    # after run.py opened its MLflow run, while loading models)
    result = run(["-m", "hydra.sweeper.strategy=one_at_a_time", f"io.input={wav},{tmp_path / 'missing.wav'}",
                  f"llm.model={good_llm},{tmp_path / 'no_model'}", f"tracking.tracking_uri={uri}",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", *SHORT])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 of 3 members failed" in result.stderr
    parents, children = parents_and_children(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["failed_members"] == 2
    kids = {k.data.tags["fern.sweep.job"]: k for k in children[parents[0].info.run_id]}
    assert sorted(kids) == ["0", "1", "2"]
    assert kids["0"].info.status == "FINISHED" and "median_voice_to_voice_ms" in kids["0"].data.metrics
    assert kids["1"].info.status == "FAILED"
    assert "AudioInputError" in kids["1"].data.tags["fern.error"] and "missing.wav" in kids["1"].data.tags["fern.error"]
    assert kids["1"].data.params["io.input"].endswith("missing.wav")  # what it would have run with
    assert kids["2"].info.status == "FAILED"
    assert "MissingWeightsError" in kids["2"].data.tags["fern.error"]
    assert kids["2"].data.params["llm.model"].endswith("no_model")  # logged by run.py itself before it failed
    table = (tmp_path / "sweep" / "comparison.csv").read_text()
    assert table.count("FAILED") == 2 and table.count("FINISHED") == 1


APP = '''
import sys
import hydra
from fern.errors import ConfigValueError
from fern.tracking.mlflow_tracker import MlflowTracker


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg):
    tracker = MlflowTracker(cfg.tracking.experiment, cfg.tracking.tracking_uri, f"mode={cfg.mode}")
    tracker.log_params({"mode": cfg.mode})
    if cfg.mode == "raise":  # an unexpected exception inside a member
        tracker.close("FAILED")
        raise RuntimeError("boom inside the member")
    if cfg.mode == "exit":  # run.py's way out: the FernError is printed, then sys.exit(2)
        tracker.close("FAILED")
        try:
            raise ConfigValueError("bad value for the member")
        except ConfigValueError as exc:
            print(f"fern: error: {exc}", file=sys.stderr)
            sys.exit(2)
    tracker.log_metrics({"median_voice_to_voice_ms": 100.0})
    tracker.close("FINISHED")
    return 1.0


main()
'''


def test_exception_and_exit_do_not_stop_the_sweep(tmp_path):
    """Both ways a member fails, without loading any model: a tiny Hydra app with FERN's sweeper and callback."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "conf" / "app.yaml").write_text(textwrap.dedent(f"""
        defaults:
          - override hydra/sweeper: fern
          - _self_
        mode: ok
        tracking: {{enabled: true, tracking_uri: "sqlite:///{tmp_path / 'mlflow.db'}", experiment: fern}}
        hydra:
          searchpath: [file://{CONF_DIR}]
          sweep: {{dir: {tmp_path / 'sweep'}}}
          callbacks:
            mlflow_sweep: {{_target_: fern.tracking.sweep_callback.MlflowSweepCallback}}
        """))
    import subprocess
    import sys

    from sweep_helpers import env

    result = subprocess.run([sys.executable, str(tmp_path / "app.py"), "-m", "mode=raise,exit,ok"],
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    parents, children = parents_and_children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = {k.data.params["mode"]: k for k in children[parents[0].info.run_id]}
    assert {m: k.info.status for m, k in kids.items()} == {"raise": "FAILED", "exit": "FAILED", "ok": "FINISHED"}
    assert kids["raise"].data.tags["fern.error"].startswith("RuntimeError: boom inside the member")
    assert "Traceback" in kids["raise"].data.tags["fern.error"]  # where it came from
    assert kids["exit"].data.tags["fern.error"] == "ConfigValueError: bad value for the member"
    assert "fern.error" not in kids["ok"].data.tags
    # the basic sweeper would have stopped: prove the members after the failures really ran
    assert client(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(kids["ok"].info.run_id).data.metrics
