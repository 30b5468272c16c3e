"""Compare runs by numbers: one row per MLflow run with its median per-turn metrics and the params that differ.

    .venv/bin/python tracking/compare.py                       # latest runs of experiment "fern"
    .venv/bin/python tracking/compare.py --sort median_voice_to_voice_ms --csv runs.csv
    .venv/bin/python tracking/compare.py --parent latest --plot breakdown.png   # the members of the newest sweep
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from typing import Any

from fern.metrics import RUN_METRICS
from fern.tracking.mlflow_tracker import resolve_tracking_uri, strip_credentials

DEFAULT_METRICS = RUN_METRICS  # the medians of every summarised metric (fern/metrics.py), then run-level figures


# Summary metrics that only some kinds of run log (turn tuning trials); shown when any compared run has them.
EXTRA_METRICS = ("cutoff_rate", "objective")


def client_for(tracking_uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def load_runs(tracking_uri: str | None, experiment: str, limit: int, parent: str | None = None) -> list[Any]:
    """The newest ``limit`` finished runs of ``experiment`` (sweep parents excluded: they are not runs of the agent);
    with ``parent`` (a run id or "latest"), all of that sweep's members instead, whatever their status (a failed
    member is part of the result), in job order."""
    from fern.tracking.sweep import SWEEP_TAG

    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    if parent is None:
        return list(client.search_runs([found.experiment_id], f"attributes.status = 'FINISHED' and "
                                       f"tags.`{SWEEP_TAG}` IS NULL", order_by=["attributes.start_time DESC"],
                                       max_results=limit))
    parent_id = resolve_parent(client, found.experiment_id, parent)
    return children_of(client, parent_id, [found.experiment_id]) if parent_id else []  # a sweep: all of it


def resolve_parent(client: Any, experiment_id: str, parent: str) -> str | None:
    """``latest`` -> the newest sweep parent run in the experiment; anything else is taken as a run id."""
    from fern.tracking.sweep import SWEEP_TAG

    if parent != "latest":
        return parent
    newest = client.search_runs([experiment_id], f"tags.`{SWEEP_TAG}` IS NOT NULL",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return newest[0].info.run_id if newest else None


def children_of(client: Any, parent_id: str, experiment_ids: Sequence[str] | None = None) -> list[Any]:
    """A sweep's member runs, in job order (members are tagged with their Hydra job number)."""
    from fern.tracking.sweep import JOB_TAG

    if experiment_ids is None:
        experiment_ids = [client.get_run(parent_id).info.experiment_id]
    runs = client.search_runs(list(experiment_ids), f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000)

    def job(run: Any) -> tuple[int, int]:
        value = run.data.tags.get(JOB_TAG, "")
        return (int(value) if value.isdigit() else 1 << 30, run.info.start_time or 0)

    return sorted(runs, key=job)


def present_metrics(runs: Sequence[Any], candidates: Sequence[str] = (*DEFAULT_METRICS, *EXTRA_METRICS)) -> list[str]:
    """The candidate metrics that at least one run has (a column of NaNs says nothing)."""
    return [m for m in candidates if any(m in r.data.metrics for r in runs)] or list(DEFAULT_METRICS)


def comparison(runs: Sequence[Any], metrics: Sequence[str] = DEFAULT_METRICS,
               sort: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: run name, the params whose values differ between the runs, then the metrics. When a run did
    not finish (a failed sweep member), ``status`` and ``error`` columns say so."""
    from fern.tracking.sweep import ERROR_TAG

    param_names = sorted({k for r in runs for k in r.data.params})
    finished = [r for r in runs if r.info.status == "FINISHED"]

    def varies(key: str) -> bool:
        # a run that failed before logging its settings (only its overrides) differs only where it has a value
        if len({r.data.params[key] for r in runs if key in r.data.params}) > 1:
            return True
        return len({key in r.data.params for r in finished}) > 1

    varying = [k for k in param_names if varies(k) and not k.startswith(("io.", "tracking."))]
    unfinished = len(finished) < len(runs)
    status = ["status", "error"] if unfinished else []
    header = ["run", *status, *varying, *metrics]

    def status_cells(r: Any) -> list[str]:
        if not unfinished:
            return []
        error = r.data.tags.get(ERROR_TAG, "")
        return [r.info.status, error.splitlines()[0][:80] if error else ""]

    rows = [[r.info.run_name, *status_cells(r), *(r.data.params.get(k, "") for k in varying),
             *(r.data.metrics.get(m, math.nan) for m in metrics)] for r in runs]
    if sort:
        column = header.index(sort)
        rows.sort(key=lambda row: (math.isnan(row[column]) if isinstance(row[column], float) else False,
                                   row[column]))
    return header, rows


def format_rows(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    table = [header, *([cell(v) for v in row] for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare FERN runs logged to MLflow.")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else tracking/mlflow.db")
    parser.add_argument("--experiment", default="fern")
    parser.add_argument("--limit", type=int, default=20, help="newest runs to show (without --parent)")
    parser.add_argument("--sort", default="median_voice_to_voice_ms", help="a metric column ('' keeps time order)")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    parser.add_argument("--parent", default=None, metavar="RUN_ID|latest",
                        help="the members of one sweep (its parent run), failed ones included")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw the latency breakdown of these runs (p50 stacked by stage, p95 whiskers)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric columns (default: the usual ones)")
    args = parser.parse_args(argv)
    runs = load_runs(args.tracking_uri, args.experiment, args.limit, parent=args.parent)
    where = strip_credentials(resolve_tracking_uri(args.tracking_uri))
    if not runs:
        what = f"no members of sweep {args.parent!r}" if args.parent else "no finished runs"
        print(f"{what} in experiment {args.experiment!r} at {where}", file=sys.stderr)
        return 1
    metrics = args.metrics.split(",") if args.metrics else present_metrics(runs)
    sort = args.sort if args.sort in metrics else None
    header, rows = comparison(runs, metrics, sort=sort)
    print(format_rows(header, rows))
    if args.csv:
        write_csv(args.csv, header, rows)
    if args.plot:
        from fern.tracking.plot import breakdowns, format_breakdown, plot_breakdown

        data = breakdowns(client_for(args.tracking_uri), runs)
        print(f"\nlatency breakdown, p50 / p95 ms per turn -> {plot_breakdown(data, args.plot)}")
        print(format_breakdown(data))
    return 0


def write_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


if __name__ == "__main__":
    raise SystemExit(main())
