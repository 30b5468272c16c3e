#!/usr/bin/env bash
# A local LLM vs Gemini on the same conversation: time to first token, first clause, voice-to-voice. Gemini needs
# GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment; without it that member is recorded FAILED and the local one
# still runs. The local default is the offline SmolLM2-135M; pass e.g. LOCAL=llama3_2_1b for a GPU comparison.
#   bash recipes/compare_llm_local_vs_gemini.sh [io.input=...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$root"
py=.venv/bin/python
$py run.py -m "llm=${LOCAL:-smollm2_offline},gemini" "$@"
$py tracking/compare.py --parent latest --plot outputs/llm_local_vs_gemini_breakdown.png \
  --metrics median_voice_to_voice_ms,median_llm_ttft_ms,median_first_clause_ms,median_round_trip_wer,turn_errors
