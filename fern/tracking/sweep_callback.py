"""One MLflow parent run per Hydra multirun, with every member's run nested under it.

Registered in conf/run.yaml under ``hydra.callbacks``. In a multirun:

- ``on_multirun_start`` (on the machine that launched the sweep) opens the parent run: tagged ``fern.sweep`` with
  the sweep's name, the sweep's definition as params (``sweep.params.<key>``: the values swept, ``sweep.fixed.<key>``:
  the other command-line overrides, the sweeper and launcher) and as a ``sweep.yaml`` artifact.
- ``on_job_start`` (in the member's process, wherever the launcher runs it) exports the parent run id and the job
  number; ``MlflowTracker`` reads them, so the member's run is a child (``mlflow.parentRunId``).
- ``on_job_end`` records a failed member: its run (or, if it failed before opening one, a new child run named by
  its overrides) is marked FAILED with the error in the ``fern.error`` tag.
- ``on_multirun_end`` writes the comparison table (``comparison.csv``) and the latency breakdown
  (``latency_breakdown.png``) of all members as parent artifacts (and into the sweep directory), prints both,
  and closes the parent. A sweep that dies half-way closes its parent as FAILED at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fern.tracking.sweep import ERROR_TAG, JOB_TAG, PARENT_RUN_ENV, SWEEP_JOB_ENV, SWEEP_TAG, describe_error, warn

log = logging.getLogger(__name__)


class MlflowSweepCallback(Callback):
    def __init__(self, enabled: bool = True, plot: bool = True) -> None:
        self.enabled = enabled
        self.plot = plot
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self._set_uri = False

    # ---- the launching side -----------------------------------------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not (self.enabled and _select(config, "tracking.enabled", True)):
            return
        # mlflow imports tqdm, which reads TQDM_* once, at import: importing it here, before the first member's
        # run_session() sets TQDM_DISABLE, would bring back every member's GGUF progress bars (as a single run has none)
        os.environ.setdefault("TQDM_DISABLE", "1")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from fern.tracking.mlflow_tracker import ensure_experiment, git_sha, redact, redact_tree, resolve_tracking_uri

        self.tracking_uri = resolve_tracking_uri(_select(config, "tracking.tracking_uri", None))
        experiment = _select(config, "tracking.experiment", "fern")
        try:
            self.experiment_id = ensure_experiment(self.tracking_uri, experiment)
            client = MlflowClient(self.tracking_uri)
            definition = sweep_definition(config)
            run = client.create_run(self.experiment_id, run_name=definition["name"], tags={
                SWEEP_TAG: definition["name"], "git_sha": git_sha(), "host": socket.gethostname(),
                "sweep_dir": str(definition["dir"])})
        except Exception as exc:  # a sweep without a parent is still a sweep: members log flat, as before
            warn(f"could not open the sweep's MLflow parent run ({type(exc).__name__}: {exc}); members log unnested")
            self.parent_run_id = None
            return
        self.parent_run_id = run.info.run_id
        atexit.register(self._close_if_open, "FAILED")  # a sweep that dies half-way leaves no RUNNING parent
        params = {f"sweep.params.{k}": v for k, v in definition["params"].items()}
        params.update({f"sweep.fixed.{k}": v for k, v in definition["fixed"].items()})
        params.update({"sweep.sweeper": definition["sweeper"], "sweep.launcher": definition["launcher"]})
        client.log_batch(self.parent_run_id, params=[Param(k, str(v)[:500]) for k, v in redact(params).items()])
        client.log_text(self.parent_run_id, OmegaConf.to_yaml(OmegaConf.create(redact_tree(definition["yaml"]))),
                        "sweep.yaml")
        log.info("sweep parent run %s (%s)", self.parent_run_id, definition["name"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        try:
            self.summarise(config)
        except Exception as exc:  # the members' runs are safe; only the summary is missing
            warn(f"could not write the sweep summary: {type(exc).__name__}: {exc}")
        finally:
            self._close_if_open("FINISHED")

    def summarise(self, config: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        from fern.tracking.compare import children_of, comparison, format_rows, present_metrics, write_csv

        client = MlflowClient(self.tracking_uri)
        runs = children_of(client, self.parent_run_id, [self.experiment_id])
        failed = [r for r in runs if r.info.status != "FINISHED"]
        client.log_metric(self.parent_run_id, "members", float(len(runs)))
        client.log_metric(self.parent_run_id, "failed_members", float(len(failed)))
        sweep_dir = Path(str(_select(config, "hydra.sweep.dir", "."))).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not runs:
            warn("no member logged a run")
            return
        metrics = present_metrics(runs)
        header, rows = comparison(runs, metrics)
        table = sweep_dir / "comparison.csv"
        write_csv(str(table), header, rows)
        client.log_artifact(self.parent_run_id, str(table))
        results = sweep_dir / "optimization_results.yaml"  # written by an Optuna sweep: the best trial(s)
        if results.is_file():
            client.log_artifact(self.parent_run_id, str(results))
        print(f"\nsweep {self.parent_run_id}: {len(runs)} members, {len(failed)} failed\n{format_rows(header, rows)}")
        if self.plot and any("median_voice_to_voice_ms" in r.data.metrics for r in runs):
            from fern.tracking.plot import breakdowns, format_breakdown, plot_breakdown

            data = breakdowns(client, runs)
            png = plot_breakdown(data, sweep_dir / "latency_breakdown.png",
                                 title=f"{client.get_run(self.parent_run_id).info.run_name}: p50 stacked, "
                                       f"whiskers to p95 (per turn)")
            client.log_artifact(self.parent_run_id, str(png))
            print(f"\nlatency breakdown, p50 / p95 ms per turn -> {png}\n{format_breakdown(data)}")
        for run in failed:
            warn(f"member {run.info.run_name!r} {run.info.status}: "
                 f"{run.data.tags.get(ERROR_TAG, '').splitlines()[0] if run.data.tags.get(ERROR_TAG) else ''}")

    def _close_if_open(self, status: str) -> None:
        run_id, self.parent_run_id = self.parent_run_id, None
        if not run_id:
            return
        atexit.unregister(self._close_if_open)
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient(self.tracking_uri).set_terminated(run_id, status)
        except Exception as exc:
            warn(f"could not close sweep run {run_id}: {exc}")

    # ---- the member side (possibly another process or machine: this object arrives pickled) --------------------
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        os.environ[SWEEP_JOB_ENV] = str(_select(config, "hydra.job.num", ""))
        if self.tracking_uri and not _select(config, "tracking.tracking_uri", None) \
                and "MLFLOW_TRACKING_URI" not in os.environ:
            # the member must log where the parent is, whatever the environment of the machine it runs on
            os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
            self._set_uri = True

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        try:
            from hydra.core.utils import JobStatus

            if job_return.status == JobStatus.FAILED:
                self.record_failure(config, job_return)
        except Exception as exc:
            warn(f"could not record the failed member in MLflow: {type(exc).__name__}: {exc}")
        finally:
            os.environ.pop(PARENT_RUN_ENV, None)
            os.environ.pop(SWEEP_JOB_ENV, None)
            if getattr(self, "_set_uri", False):
                os.environ.pop("MLFLOW_TRACKING_URI", None)
                self._set_uri = False

    def record_failure(self, config: DictConfig, job_return: Any) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        job = str(_select(config, "hydra.job.num", ""))
        error = describe_error(job_return._return_value)
        found = client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_run_id}' and "
                                   f"tags.`{JOB_TAG}` = '{job}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
        else:  # it failed before opening its run (bad input, bad config): the sweep's record still shows it
            name = _select(config, "hydra.job.override_dirname", None) or f"job {job}"
            run_id = client.create_run(self.experiment_id, run_name=name, tags={
                "mlflow.parentRunId": self.parent_run_id, JOB_TAG: job, "host": socket.gethostname()}).info.run_id
            client.log_batch(run_id, params=[Param(k, v) for k, v in member_params(config, job_return).items()])
        client.set_tag(run_id, ERROR_TAG, error)
        client.set_terminated(run_id, "FAILED")
        warn(f"member {job} failed ({error.splitlines()[0]}); the sweep goes on")


def member_params(config: DictConfig, job_return: Any) -> dict[str, str]:
    """The settings a member would have run with (its resolved config, as run.py logs them); just its overrides when
    the config itself does not resolve (which may be why it failed)."""
    from fern.tracking.mlflow_tracker import flatten, redact

    try:
        tree = OmegaConf.to_container(config, resolve=True)
        tree.pop("hydra", None)
        params = flatten(tree)
    except Exception:
        params = {}
        for override in job_return.overrides or []:
            key, _, value = str(override).lstrip("+~").partition("=")
            if key and not key.startswith("hydra"):
                params[key] = value
    return {k: ("null" if v is None else str(v))[:500] for k, v in redact(params).items()}


def sweep_definition(config: DictConfig) -> dict[str, Any]:
    """Name, swept params, fixed overrides, sweeper and launcher of a multirun, from its (master) config."""
    hydra = config.hydra
    choices = OmegaConf.to_container(hydra.runtime.choices) if "runtime" in hydra else {}
    task_overrides = [str(o) for o in OmegaConf.to_container(hydra.overrides.task)]
    swept = hydra.sweeper.get("params")
    params = {str(k): str(v) for k, v in (OmegaConf.to_container(swept) if swept is not None else {}).items()}
    fixed: dict[str, str] = {}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(task_overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            value = (override.input_line or "").partition("=")[2]
            params[key] = value  # a swept command-line override
        elif key != "sweep":
            fixed[key] = override.get_value_element_as_str()
    sweep_name = choices.get("sweep")
    name = f"sweep={sweep_name}" if sweep_name else "multirun " + " ".join(task_overrides)
    target = lambda node: str(node.get("_target_", "")) if node is not None else ""
    return {
        "name": name[:250], "params": params, "fixed": fixed, "dir": _select(config, "hydra.sweep.dir", ""),
        "sweeper": target(hydra.get("sweeper")), "launcher": target(hydra.get("launcher")),
        "yaml": {"name": name, "overrides": task_overrides,
                 "sweeper": OmegaConf.to_container(hydra.sweeper, resolve=False),
                 "launcher": OmegaConf.to_container(hydra.launcher, resolve=False)},
    }


def _select(config: DictConfig, key: str, default: Any) -> Any:
    try:
        value = OmegaConf.select(config, key, default=default, throw_on_missing=False)
    except Exception:
        return default
    return default if value is None else value

