"""Lint (ruff: errors, import order, bug patterns) and dead code (vulture, confidence >= 80) over the whole tree, as
part of the suite so that CI and the README's test command run them; settings in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fern.paths import PROJECT_ROOT

BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    result = run("ruff", "check", ".", "--output-format", "concise")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_vulture_finds_no_dead_code():
    result = run("vulture")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
