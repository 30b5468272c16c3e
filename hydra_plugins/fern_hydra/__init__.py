"""FERN's Hydra plugins: a sweeper (grid / one-at-a-time / Optuna; failed members never stop a sweep) and a Ray
launcher. Selected from conf/hydra/sweeper/*.yaml and conf/hydra/launcher/*.yaml."""
