#!/usr/bin/env bash
# Quick wins on a CPU: each cheap setting changed on its own against the defaults (sweep=quick_wins: 6 members on the
# bundled two-question conversation), then the members side by side and the latency breakdown plot.
#   bash recipes/sweep_quick_wins.sh                       # extra args go to run.py, e.g. io.input=my.wav
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$root"
py=.venv/bin/python
HF_HUB_OFFLINE=1 $py run.py sweep=quick_wins "$@"
$py tracking/compare.py --parent latest --plot outputs/quick_wins_breakdown.png --csv outputs/quick_wins.csv
