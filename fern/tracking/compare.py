"""Compare runs by numbers: one row per MLflow run with its median per-turn metrics and the params that differ.

    .venv/bin/python tracking/compare.py                       # latest runs of experiment "fern"
    .venv/bin/python tracking/compare.py --sort median_voice_to_voice_ms --csv runs.csv
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


def load_runs(tracking_uri: str | None, experiment: str, limit: int) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return list(client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"], max_results=limit))


def comparison(runs: Sequence[Any], metrics: Sequence[str] = DEFAULT_METRICS,
               sort: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: run name, the params whose values differ between the runs, then the metrics."""
    param_names = sorted({k for r in runs for k in r.data.params})
    varying = [k for k in param_names
               if len({r.data.params.get(k) for r in runs}) > 1 and not k.startswith(("io.", "tracking."))]
    header = ["run", *varying, *metrics]
    rows = [[r.info.run_name, *(r.data.params.get(k, "") for k in varying),
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
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--sort", default="median_voice_to_voice_ms", help="a metric column ('' keeps time order)")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    runs = load_runs(args.tracking_uri, args.experiment, args.limit)
    if not runs:
        print(f"no finished runs in experiment {args.experiment!r} at "
              f"{strip_credentials(resolve_tracking_uri(args.tracking_uri))}", file=sys.stderr)
        return 1
    header, rows = comparison(runs, sort=args.sort or None)
    print(format_rows(header, rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
