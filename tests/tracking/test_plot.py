"""The latency-breakdown plot from plain numbers (no MLflow, no models)."""

from __future__ import annotations

import math

from fern.tracking.plot import (
    BREAKDOWN_STAGES,
    RunBreakdown,
    StageStats,
    format_breakdown,
    percentiles,
    plot_breakdown,
    short_labels,
)


def test_percentiles_ignore_missing_turns():
    stats = percentiles([100.0, math.nan, 300.0, 200.0])
    assert (stats.p50, stats.n) == (200.0, 3) and 280.0 <= stats.p95 <= 300.0
    assert math.isnan(percentiles([]).p50) and percentiles([]).n == 0


def test_labels_show_what_sets_a_member_apart():
    one_at_a_time = ["a=1,b=x,c=5", "a=2,b=x,c=5", "a=1,b=y,c=5"]
    assert short_labels(one_at_a_time) == ["baseline", "a=2", "b=y"]
    assert short_labels(["t=500,m=12", "t=900,m=12"]) == ["t=500", "t=900"]
    assert short_labels(["defaults", "t=1"]) == ["defaults", "t=1"]  # not all override-style: names kept


def test_plot_and_its_numbers(tmp_path):
    from PIL import Image

    data = [RunBreakdown(f"x={i}", {s: StageStats(100.0 * (i + 1), 150.0 * (i + 1), 2) for s in BREAKDOWN_STAGES},
                         StageStats(420.0 * (i + 1), 500.0, 2)) for i in range(3)]
    data.append(RunBreakdown("x=failed", {s: StageStats(math.nan, math.nan, 0) for s in BREAKDOWN_STAGES}, None))
    png = plot_breakdown(data, tmp_path / "b.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and len(image.convert("RGB").getcolors(1 << 20)) > 10
    text = format_breakdown(data)
    assert "100 / 150" in text and "400" in text.splitlines()[1]  # four stages of 100 ms stack to 400
    assert text.splitlines()[-1].split()[-1] == "nan"
