"""Latency breakdown of a set of runs: where a reply's time goes, stage by stage, one bar per run.

Each bar stacks the median (p50) of each stage's per-turn metric (logged with step = turn), with a whisker from the
top of each segment up to that stage's p95; a diamond marks the run's median voice-to-voice latency, so the part of
the bar it does not reach (or overshoots) is what the stages do not explain (queueing, playback buffering).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# endpoint (user stopped -> turn ended), ASR, first clause (transcript -> first speakable clause: LLM TTFT included),
# TTS first audio (clause -> first audio): consecutive on the critical path of a reply
BREAKDOWN_STAGES = ("endpoint_delay_ms", "asr_ms", "first_clause_ms", "tts_first_audio_ms")
TOTAL_METRIC = "voice_to_voice_ms"
COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


@dataclass
class StageStats:
    p50: float
    p95: float
    n: int


@dataclass
class RunBreakdown:
    name: str
    stages: dict[str, StageStats] = field(default_factory=dict)
    total: StageStats | None = None  # voice-to-voice


def percentiles(values: Sequence[float]) -> StageStats:
    import numpy as np

    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return StageStats(math.nan, math.nan, 0)
    return StageStats(float(np.percentile(clean, 50)), float(np.percentile(clean, 95)), len(clean))


def per_turn_values(client: Any, run_id: str, metric: str) -> list[float]:
    """A per-turn metric's values, one per step (turn); the last value logged wins for a repeated step."""
    by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.timestamp)}
    return [by_step[s] for s in sorted(by_step)]


def breakdowns(client: Any, runs: Sequence[Any], stages: Sequence[str] = BREAKDOWN_STAGES,
               total: str | None = TOTAL_METRIC) -> list[RunBreakdown]:
    out = []
    for run in runs:
        rb = RunBreakdown(run.info.run_name or run.info.run_id)
        for stage in stages:
            rb.stages[stage] = percentiles(per_turn_values(client, run.info.run_id, stage))
        if total:
            rb.total = percentiles(per_turn_values(client, run.info.run_id, total))
        out.append(rb)
    return out


def plot_breakdown(data: Sequence[RunBreakdown], path: str | Path, stages: Sequence[str] = BREAKDOWN_STAGES,
                   title: str = "Latency breakdown per run (p50 stacked, whiskers to p95)") -> Path:
    """Write the stacked-bar PNG. Runs with no per-turn data still get a (empty) labelled slot."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, safe in workers and CI
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(data), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * n + 3), 5.5))
    xs = list(range(len(data)))
    bottoms = [0.0] * len(data)
    for i, stage in enumerate(stages):
        p50 = [0.0 if math.isnan(d.stages[stage].p50) else d.stages[stage].p50 for d in data]
        p95 = [0.0 if math.isnan(d.stages[stage].p95) else d.stages[stage].p95 for d in data]
        colour = COLOURS[i % len(COLOURS)]
        ax.bar(xs, p50, bottom=bottoms, color=colour, label=stage.removesuffix("_ms"), width=0.6)
        tops = [b + v for b, v in zip(bottoms, p50)]
        upper = [max(0.0, hi - lo) for lo, hi in zip(p50, p95)]
        ax.errorbar([x + (i - (len(stages) - 1) / 2) * 0.08 for x in xs], tops, yerr=[[0.0] * len(data), upper],
                    fmt="none", ecolor=colour, elinewidth=1.2, capsize=3, alpha=0.9)
        bottoms = tops
    totals = [d.total.p50 if d.total and not math.isnan(d.total.p50) else None for d in data]
    if any(t is not None for t in totals):
        ax.scatter([x for x, t in zip(xs, totals) if t is not None], [t for t in totals if t is not None],
                   marker="D", color="black", zorder=5, label="voice-to-voice p50")
    ax.set_xticks(xs)
    ax.set_xticklabels([_wrap(label) for label in short_labels([d.name for d in data])], rotation=30, ha="right",
                       fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def short_labels(names: Sequence[str]) -> list[str]:
    """Bar labels: only what sets a run apart. Runs named by their overrides (``k=v,k2=v2``) keep the overrides
    whose key varies and whose value is not the one most runs share (so a one-at-a-time sweep reads "baseline",
    "asr.beam_size=1", ...); names that are not overrides are kept whole."""
    from collections import Counter

    parsed = []
    for name in names:
        pieces = name.split(",")
        if not name or not all("=" in p for p in pieces):
            return list(names)
        parsed.append(dict(p.split("=", 1) for p in pieces))
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    labels = []
    for p in parsed:
        shown = []
        for key in keys:
            counts = Counter(q.get(key) for q in parsed).most_common()
            if len(counts) == 1:
                continue  # the same in every run
            strict_mode = counts[0][0] if counts[0][1] > counts[1][1] else object()
            if p.get(key) != strict_mode:
                shown.append(f"{key}={p.get(key, '-')}")
        labels.append(",".join(shown) or "baseline")
    return labels if len(set(labels)) == len(labels) else list(names)


def _wrap(name: str, width: int = 28) -> str:
    parts, line = [], ""
    for piece in name.split(","):
        if line and len(line) + len(piece) + 1 > width:
            parts.append(line + ",")
            line = piece
        else:
            line = f"{line},{piece}" if line else piece
    parts.append(line)
    return "\n".join(parts)


def format_breakdown(data: Sequence[RunBreakdown], stages: Sequence[str] = BREAKDOWN_STAGES) -> str:
    """The plot's numbers as text (p50 / p95 ms per stage), for logs and reports."""
    header = ["run", *(s.removesuffix("_ms") for s in stages), "stacked p50", "voice_to_voice p50"]
    rows = []
    for d in data:
        cells = [f"{d.stages[s].p50:.0f} / {d.stages[s].p95:.0f}" for s in stages]
        stacked = sum(d.stages[s].p50 for s in stages if not math.isnan(d.stages[s].p50))
        rows.append([d.name, *cells, f"{stacked:.0f}",
                     f"{d.total.p50:.0f}" if d.total and not math.isnan(d.total.p50) else "nan"])
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in table)
