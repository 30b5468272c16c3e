"""A Hydra launcher that runs each sweep member as a Ray task: on a local Ray instance, or spread over a cluster.

Why not hydra-ray-launcher (1.2.2, the current release): it requires cloudpickle<3, which breaks joblib (scikit-learn)
in our environment; the part we need (ship the task to Ray, run it with Hydra's ``run_job``, collect the returns) is
this file. The config keys are the same: ``hydra.launcher.ray.init`` (``ray.init`` arguments: ``address=auto`` for a
running cluster) and ``hydra.launcher.ray.remote`` (``ray.remote`` options: ``num_gpus=1`` gives each member a GPU).

Members run where Ray puts them, so they must log to a tracking server every machine reaches (set
``MLFLOW_TRACKING_URI``; the variables named in ``forward_env`` travel to the workers). A member whose worker dies
(out of memory, node lost) is reported FAILED and the sweep goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class RayLauncher(Launcher):
    def __init__(self, ray: Any = None, forward_env: Sequence[str] = ()) -> None:
        self.ray_cfg = ray if ray is not None else OmegaConf.create({"init": {}, "remote": {}})
        self.forward_env = list(forward_env)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        init = OmegaConf.to_container(self.ray_cfg.get("init") or {}, resolve=True) or {}
        init = {k: v for k, v in init.items() if v is not None or k == "address"}
        env = {k: os.environ[k] for k in self.forward_env if k in os.environ}
        if env:
            runtime_env = dict(init.get("runtime_env") or {})
            runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
            init["runtime_env"] = runtime_env
        log.info("starting Ray: %s", {k: v for k, v in init.items() if k != "runtime_env"})
        ray.init(**init)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        self.start_ray()
        options = OmegaConf.to_container(self.ray_cfg.get("remote") or {}, resolve=True) or {}
        remote = ray.remote(**options)(run_member) if options else ray.remote(run_member)
        log.info("Ray: launching %d members (%s)", len(job_overrides), options or "default resources")
        pending = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"ray_{idx}"
                sweep_config.hydra.job.num = idx
            pending.append((sweep_config, overrides, remote.remote(
                self.hydra_context, sweep_config, self.task_function, Singleton.get_state())))
        returns = []
        for sweep_config, overrides, ref in pending:
            try:
                returns.append(ray.get(ref))
            except Exception as exc:  # the task never returned (worker died): no callback ran over there
                log.error("member %s: Ray task failed: %s", sweep_config.hydra.job.num, exc)
                ret = JobReturn(overrides=list(overrides), cfg=sweep_config, hydra_cfg=sweep_config,
                                _return_value=exc, status=JobStatus.FAILED)
                self.hydra_context.callbacks.on_job_end(config=sweep_config, job_return=ret)
                returns.append(ret)
        return returns


def run_member(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction,
               singleton_state: dict[Any, Any]) -> JobReturn:
    """Runs in the Ray worker: the same ``run_job`` (callbacks, output dir, logging) as Hydra's basic launcher."""
    from hydra.core.hydra_config import HydraConfig

    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
