"""Sweep presets compose, and FERN's sweeper turns their params into the members it promises (no models loaded)."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.fern_hydra.sweeper import distribution, grid, one_at_a_time


def hydra_cfg(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fern.config import register
    from fern.paths import CONF_DIR

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("run", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def members(cfg):
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    return grid(parsed) if cfg.hydra.sweeper.strategy == "grid" else one_at_a_time(parsed)


@pytest.mark.parametrize("name,count", [("quick_wins", 7), ("gpu_optim", 24)])
def test_presets_compose_into_valid_members(name, count):
    cfg = hydra_cfg([f"sweep={name}"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper._target_.endswith("FernSweeper")
    assert cfg.hydra.callbacks.mlflow_sweep._target_ == "fern.tracking.sweep_callback.MlflowSweepCallback"
    jobs = members(cfg)
    assert len(jobs) == count and len({tuple(j) for j in jobs}) == count
    for job in jobs:  # every member's config composes (a typo in a preset fails here, not mid-sweep)
        hydra_cfg([f"sweep={name}", *job])


def test_quick_wins_baseline_is_the_default_config():
    """One at a time is only meaningful if the baseline member is what run.py does without overrides."""
    cfg = hydra_cfg(["sweep=quick_wins"])
    baseline = members(cfg)[0]
    defaults = hydra_cfg([])
    for override in baseline:
        key, value = override.split("=")
        assert str(OmegaConf.select(defaults, key)) == value, key


def test_one_at_a_time_and_grid():
    parsed = OverridesParser.create().parse_overrides(["a=1,2,3", "b=x,y", "c=fixed"])
    assert one_at_a_time(parsed) == [["a=1", "b=x", "c=fixed"], ["a=2", "b=x", "c=fixed"], ["a=3", "b=x", "c=fixed"],
                                     ["a=1", "b=y", "c=fixed"]]
    assert len(grid(parsed)) == 6


def test_optuna_search_space_from_hydra_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    parsed = OverridesParser.create().parse_overrides(
        ["a=range(200,1500,20)", "b=0,1,2", "c=interval(0.1,0.9)", "d=tag(log, interval(1e-4, 1e-1))",
         "e=int(interval(1,8))"])
    space = [distribution(o) for o in parsed]
    assert space[0] == IntDistribution(200, 1480, step=20)
    assert space[1] == CategoricalDistribution(["0", "1", "2"])
    assert space[2] == FloatDistribution(0.1, 0.9)
    assert space[3] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space[4] == IntDistribution(1, 8)


def test_turn_tuning_preset_is_an_optuna_search():
    cfg = hydra_cfg(["sweep=turn_tuning"])
    assert cfg.hydra.sweeper.strategy == "optuna"
    assert list(cfg.hydra.sweeper.optuna.weights) == [1.0, 3000.0]
    assert set(cfg.hydra.sweeper.params) == {"turn.silence_ms", "vad.aggressiveness", "vad.frame_ms"}
