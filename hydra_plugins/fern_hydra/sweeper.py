"""FERN's Hydra sweeper: a grid (or one-at-a-time) sweep, or an Optuna search, over ``hydra.sweeper.params``.

Why not Hydra's basic sweeper: a member that fails, or calls ``sys.exit`` as run.py does on a FernError, ends the
whole multirun there (``run_job`` only catches ``Exception``; the basic sweeper re-raises a failed job's error).
Here every member runs through ``fern.tracking.sweep.member_task`` (a non-zero exit becomes an exception with the
error's message), a failed member is reported and the sweep goes on (``continue_on_failure``).

Why not hydra-optuna-sweeper: 1.3.0 (the current release) requires optuna<3 and would pin us to optuna 2.10 (2021);
this sweeper uses current Optuna with the same parameter syntax: ``choice(a,b)`` / ``a,b`` (categorical),
``range(lo,hi,step)`` (stepped ints or floats), ``interval(lo,hi)`` (continuous; ``int(interval(lo,hi))`` for integers),
``tag(log, interval(lo,hi))`` (log scale).

Strategies (``strategy``):
- ``grid``: every combination, like the basic sweeper.
- ``one_at_a_time``: the baseline (the first value of every swept param), then each other value of each param with
  the rest at baseline: 1 + sum(values - 1) members. What a quick-wins screen needs.
- ``optuna``: ``optuna.n_trials`` trials (``optuna.n_jobs`` launched together), sampled by TPE (or random); the task
  returns a number, or a tuple combined by ``optuna.weights`` into one (or a multi-objective study without weights).
  The best trial's overrides are printed as a ready command and written to ``optimization_results.yaml``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

STRATEGIES = ("grid", "one_at_a_time", "optuna")


class FernSweeper(Sweeper):
    def __init__(self, params: Any = None, max_batch_size: int | None = None, strategy: str = "grid",
                 continue_on_failure: bool = True, optuna: Any = None) -> None:
        if strategy not in STRATEGIES:
            raise HydraException(f"hydra.sweeper.strategy={strategy!r}: use one of {', '.join(STRATEGIES)}")
        self.params = dict(params or {})
        self.max_batch_size = max_batch_size
        self.strategy = strategy
        self.continue_on_failure = continue_on_failure
        self.optuna_cfg = optuna
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.job_idx = 0
        self.failed: list[JobReturn] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from fern.tracking.sweep import member_task

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=member_task(task_function), config=config)

    # ---- driving -------------------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        overrides = self.parse([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if self.strategy == "optuna":
            return self.optuna_search(overrides, sweep_dir)
        members = grid(overrides) if self.strategy == "grid" else one_at_a_time(overrides)
        size = self.max_batch_size or len(members) or 1
        returns = [self.launch(members[i:i + size]) for i in range(0, len(members), size)]
        self.report(sum(len(r) for r in returns))
        return returns

    def parse(self, arguments: Sequence[str]) -> list[Override]:
        assert self.hydra_context is not None
        parsed = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(
            list(arguments))
        last: dict[str, Override] = {}  # a command-line value replaces the preset's for the same key
        for override in parsed:
            last.pop(override.get_key_element(), None)
            last[override.get_key_element()] = override
        return list(last.values())

    def launch(self, batch: Sequence[Sequence[str]]) -> Sequence[JobReturn]:
        if not batch:
            return []
        returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
        self.job_idx += len(batch)
        for ret in returns:
            if ret.status != JobStatus.COMPLETED:
                if not self.continue_on_failure:
                    _ = ret.return_value  # re-raises the member's error, as Hydra's basic sweeper does
                self.failed.append(ret)
        return returns

    def report(self, n: int) -> None:
        if self.failed:
            from fern.tracking.sweep import describe_error, warn

            for ret in self.failed:
                warn(f"FAILED {' '.join(ret.overrides or [])}: "
                     f"{describe_error(ret._return_value).splitlines()[0]}")
            warn(f"{len(self.failed)} of {n} members failed")

    # ---- optuna ----------------------------------------------------------------------------------------------
    def optuna_search(self, overrides: list[Override], sweep_dir: Path) -> Any:
        import optuna

        cfg = OmegaConf.to_container(self.optuna_cfg, resolve=True) if self.optuna_cfg is not None else {}
        cfg = {**OPTUNA_DEFAULTS, **(cfg or {})}
        fixed = [o for o in overrides if not o.is_sweep_override()]
        space = {o.get_key_element(): distribution(o) for o in overrides if o.is_sweep_override()}
        if not space:
            raise HydraException("strategy=optuna needs at least one swept param in hydra.sweeper.params")
        weights = cfg["weights"]
        directions = cfg["direction"] if isinstance(cfg["direction"], list) else [cfg["direction"]]
        if weights is not None and len(directions) != 1:
            raise HydraException("optuna.weights combine the task's values into one: give a single direction")
        sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=cfg["seed"]),
                   "random": lambda: optuna.samplers.RandomSampler(seed=cfg["seed"])}[cfg["sampler"]]()
        study = optuna.create_study(study_name=cfg["study_name"], storage=cfg["storage"], sampler=sampler,
                                    directions=directions, load_if_exists=cfg["storage"] is not None)
        fixed_args = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in fixed]
        returns, done = [], 0
        while done < cfg["n_trials"]:
            trials = [study.ask(space) for _ in range(min(cfg["n_jobs"], cfg["n_trials"] - done))]
            batch = [[*fixed_args, *(f"{k}={render(v)}" for k, v in t.params.items())] for t in trials]
            results = self.launch(batch)
            for trial, ret in zip(trials, results):
                values = objective_values(ret, weights, len(directions), trial)
                if values is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, values)
            returns.append(results)
            done += len(trials)
        self.report(done)
        self.write_best(study, fixed, sweep_dir, cfg)
        return returns

    def write_best(self, study: Any, fixed: list[Override], sweep_dir: Path, cfg: dict[str, Any]) -> None:
        best = study.best_trials
        if not best:
            from fern.tracking.sweep import warn

            warn("no trial completed: no best overrides")
            return
        import shlex

        drop = set(cfg["drop_from_command"])
        keep = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in fixed
                if o.get_key_element() not in drop and not o.get_key_element().startswith("hydra")]
        results = []
        print(f"\n{'best trial' if len(best) == 1 else f'{len(best)} Pareto-optimal trials'} of {len(study.trials)}:")
        for trial in best:
            overrides = [*keep, *(f"{k}={render(v)}" for k, v in trial.params.items())]
            command = " ".join([cfg["command"], *(shlex.quote(o) for o in overrides)])
            raw = trial.user_attrs.get("values")
            shown = ", ".join(f"{v:.4g}" for v in trial.values)
            print(f"  trial {trial.number}: objective {shown}"
                  f"{' from ' + ', '.join(f'{v:.4g}' for v in raw) if raw else ''}\n  {command}")
            results.append({"trial": trial.number, "objective": list(trial.values), "raw_values": raw,
                            "params": {k: render(v) for k, v in trial.params.items()}, "overrides": overrides,
                            "command": command})
        OmegaConf.save(OmegaConf.create({"name": "optuna", "directions": [str(d.name) for d in study.directions],
                                         "best": results}), sweep_dir / "optimization_results.yaml")


OPTUNA_DEFAULTS: dict[str, Any] = {
    "direction": "minimize", "n_trials": 20, "n_jobs": 1, "sampler": "tpe", "seed": 0, "storage": None,
    "study_name": None, "weights": None, "command": "python run.py", "drop_from_command": ["sweep", "hydra/sweeper"],
}


def grid(overrides: list[Override]) -> list[list[str]]:
    return [list(x) for x in itertools.product(*(values(o) for o in overrides))]


def one_at_a_time(overrides: list[Override]) -> list[list[str]]:
    """Baseline (first value of every swept param), then one param at a time at each of its other values."""
    options = [values(o) for o in overrides]
    baseline = [v[0] for v in options]
    members = [baseline]
    for i, vals in enumerate(options):
        for other in vals[1:]:
            members.append([*baseline[:i], other, *baseline[i + 1:]])
    return members


def values(override: Override) -> list[str]:
    key = override.get_key_element()
    if not override.is_sweep_override():
        return [f"{key}={override.get_value_element_as_str()}"]
    if not override.is_discrete_sweep():
        raise HydraException(f"{key}: interval() can only be searched (strategy=optuna), not enumerated")
    return [f"{key}={v}" for v in override.sweep_string_iterator()]


def distribution(override: Override) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    key = override.get_key_element()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    if isinstance(value, RangeSweep):
        points = list(value.range())
        if not points:
            raise HydraException(f"{key}: empty range")
        if all(isinstance(p, int) for p in points):
            return IntDistribution(points[0], points[-1], step=int(value.step), log=log_scale and value.step == 1)
        return FloatDistribution(float(points[0]), float(points[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise HydraException(f"{key}: cannot search a {type(value).__name__}")


def render(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if not value.is_integer() else str(value)
    return str(value)


def objective_values(ret: JobReturn, weights: Sequence[float] | None, n_objectives: int,
                     trial: Any) -> list[float] | None:
    """The member's return as Optuna values; None (trial FAILED) for a failed member or a NaN."""
    if ret.status != JobStatus.COMPLETED:
        return None
    raw = ret._return_value
    raw_list = list(raw) if isinstance(raw, (tuple, list)) else [raw]
    try:
        numbers = [float(v) for v in raw_list]
    except (TypeError, ValueError):
        log.warning("trial %d returned %r: not numbers", trial.number, raw)
        return None
    if len(numbers) > 1:
        trial.set_user_attr("values", numbers)
    if weights is not None:
        if len(weights) != len(numbers):
            raise HydraException(f"optuna.weights has {len(weights)} entries, the task returned {len(numbers)}")
        numbers = [sum(w * v for w, v in zip(weights, numbers))]
    if len(numbers) != n_objectives:
        raise HydraException(f"the task returned {len(numbers)} values for {n_objectives} directions")
    return None if any(math.isnan(v) for v in numbers) else numbers
