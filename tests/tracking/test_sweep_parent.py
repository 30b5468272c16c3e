"""A real two-member sweep of run.py on the offline models: one MLflow parent, two children, table and plot."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_helpers import SHORT, client, env, one_question_wav, parents_and_children, run

from fern.paths import PROJECT_ROOT

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    wav = one_question_wav(tmp / "one_question.wav")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = run(["-m", "turn.silence_ms=500,900", "turn=silence", "vad=webrtc", f"io.input={wav}",
                  f"tracking.tracking_uri={uri}",
                  f"hydra.sweep.dir={tmp / 'sweep'}", *SHORT])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"uri": uri, "dir": tmp / "sweep", "result": result, "tmp": tmp}


def test_one_parent_with_two_finished_children(sweep):
    parents, children = parents_and_children(sweep["uri"])
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    # the sweep's definition is on the parent: what was swept, what was fixed, by which sweeper
    assert parent.data.params["sweep.params.turn.silence_ms"] == "500,900"
    assert parent.data.params["sweep.fixed.llm.max_new_tokens"] == "12"
    assert parent.data.params["sweep.sweeper"].endswith("FernSweeper")
    assert parent.data.metrics["members"] == 2 and parent.data.metrics["failed_members"] == 0
    kids = children[parent.info.run_id]
    assert sorted(k.data.tags["fern.sweep.job"] for k in kids) == ["0", "1"]
    assert all(k.info.status == "FINISHED" for k in kids)
    by_ms = {k.data.params["turn.silence_ms"]: k for k in kids}
    assert set(by_ms) == {"500", "900"}
    assert by_ms["500"].data.metrics["median_endpoint_delay_ms"] < by_ms["900"].data.metrics["median_endpoint_delay_ms"]
    # no other runs were made: every run of the experiment is the parent or one of its children
    c = client(sweep["uri"])
    assert len(c.search_runs([parent.info.experiment_id])) == 3


def test_members_are_named_by_what_was_swept_and_keep_their_own_outputs(sweep):
    """One MLflow run per member, named by its overrides (paths and tracking settings say where, not what, was run:
    left out), the swept value changing the behaviour it controls, each member's transcript in its own directory."""
    import json

    parents, children = parents_and_children(sweep["uri"])
    by_name = {k.info.run_name: k for k in children[parents[0].info.run_id]}
    names = {ms: f"llm.max_new_tokens=12,round_trip_eval=False,turn.silence_ms={ms},turn=silence,vad=webrtc"
             for ms in (500, 900)}
    assert set(by_name) == set(names.values())
    delays = {ms: by_name[name].data.metrics["median_endpoint_delay_ms"] for ms, name in names.items()}
    assert 480 <= delays[500] <= 700 < 880 <= delays[900] <= 1100
    for job, ms in enumerate((500, 900)):
        transcript = json.loads((sweep["dir"] / f"{job}_{names[ms]}" / "transcript.json").read_text())
        assert len(transcript["turns"]) == 1
    # the comparison table puts them side by side, the swept setting as a column and equal settings left out
    from fern.tracking.compare import comparison, load_runs

    header, rows = comparison(load_runs(sweep["uri"], "fern", 10), sort="median_endpoint_delay_ms")
    assert [row[header.index("turn.silence_ms")] for row in rows] == ["500", "900"]
    assert "llm.max_new_tokens" not in header


def test_parent_artifacts_table_and_plot(sweep):
    from PIL import Image

    parents, children = parents_and_children(sweep["uri"])
    parent = parents[0]
    c = client(sweep["uri"])
    names = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "latency_breakdown.png", "sweep.yaml"} <= names
    local = sweep["tmp"] / "artifacts"
    table = c.download_artifacts(parent.info.run_id, "comparison.csv", str(local))
    rows = list(csv.reader(Path(table).read_text().splitlines()))
    header, body = rows[0], rows[1:]
    assert len(body) == 2
    assert {row[0] for row in body} == {k.info.run_name for k in children[parent.info.run_id]}
    assert sorted(row[header.index("turn.silence_ms")] for row in body) == ["500", "900"]
    assert all(float(row[header.index("median_voice_to_voice_ms")]) > 0 for row in body)
    png = c.download_artifacts(parent.info.run_id, "latency_breakdown.png", str(local))
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # bars were drawn, not a blank canvas
    # the same files are in the sweep directory
    assert (sweep["dir"] / "comparison.csv").is_file() and (sweep["dir"] / "latency_breakdown.png").is_file()
    # the printed summary carries the plot's numbers
    assert "latency breakdown" in sweep["result"].stdout


def test_breakdown_numbers_follow_the_swept_setting(sweep):
    from fern.tracking.plot import breakdowns

    parents, children = parents_and_children(sweep["uri"])
    kids = sorted(children[parents[0].info.run_id], key=lambda k: int(k.data.params["turn.silence_ms"]))
    data = breakdowns(client(sweep["uri"]), kids)
    endpoint = [d.stages["endpoint_delay_ms"].p50 for d in data]
    assert 480 <= endpoint[0] <= 700 < 880 <= endpoint[1] <= 1100
    for d in data:
        assert d.stages["asr_ms"].n == 1 and d.stages["asr_ms"].p50 > 0
        assert d.stages["asr_ms"].p95 >= d.stages["asr_ms"].p50
        assert d.total is not None and d.total.p50 > d.stages["endpoint_delay_ms"].p50


def test_compare_parent_latest_and_plot(sweep, tmp_path):
    from PIL import Image

    png, table = tmp_path / "b.png", tmp_path / "t.csv"
    printed = subprocess.run([sys.executable, str(PROJECT_ROOT / "tracking" / "compare.py"), "--tracking-uri",
                              sweep["uri"], "--parent", "latest", "--plot", str(png), "--csv", str(table)],
                             capture_output=True, text=True, timeout=300, cwd="/", env=env())
    assert printed.returncode == 0, printed.stderr
    table_part, _, plot_part = printed.stdout.partition("latency breakdown")
    assert table_part.count("turn.silence_ms=") == 2
    assert plot_part.count("turn.silence_ms=") == 2 and "endpoint_delay" in plot_part  # the plot's numbers
    with Image.open(png) as image:
        image.verify()
    assert len(list(csv.reader(table.read_text().splitlines()))) == 3
    # without --parent: the plain list of finished runs (the parent itself is not a member) and the same plot
    plain = subprocess.run([sys.executable, str(PROJECT_ROOT / "tracking" / "compare.py"), "--tracking-uri",
                            sweep["uri"], "--plot", str(tmp_path / "all.png")], capture_output=True, text=True,
                           timeout=300, cwd="/", env=env())
    assert plain.returncode == 0, plain.stderr
    plain_table = plain.stdout.partition("latency breakdown")[0]
    assert "multirun" not in plain_table and plain_table.count("turn.silence_ms=") == 2
    assert (tmp_path / "all.png").stat().st_size > 1000
    missing = subprocess.run([sys.executable, str(PROJECT_ROOT / "tracking" / "compare.py"), "--tracking-uri",
                              sweep["uri"], "--parent", "0123456789abcdef0123456789abcdef"], capture_output=True,
                             text=True, timeout=300, cwd="/", env=env())
    assert missing.returncode == 1 and "no members" in missing.stderr
