"""fern.bench.llm end to end on the tiny random Llama (the real sizes are run by hand; see the module docstring)."""

from __future__ import annotations

import pytest

from fern.bench import llm as bench

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)


def test_bench_prints_a_table_with_prefix_reuse(capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = bench.main(["--size", "tiny", "--turns", "1,4", "--runs", "1", "--new-tokens", "4", "--variants",
                     "eager,static"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("| eager |") or line.startswith("| static |")]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        turn, prompt, reused = int(cells[1]), int(cells[2]), int(cells[3])
        assert reused > 0 and prompt > reused
        assert float(cells[4]) > 0 and float(cells[6]) > 0
        if turn == 4:
            assert reused > 0.6 * prompt  # earlier turns come from the cache (only the last exchange is new)


def test_conversation_shapes() -> None:
    c = bench.conversation(3)
    assert [m["role"] for m in c] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert c[-1]["content"] == bench.user_msg(3)
