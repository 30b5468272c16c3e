#!/usr/bin/env bash
# Fine-tune the LLM with LoRA on chat data, then compare the base model with the adapter on the same conversation.
# NEEDS train.py (being built: `train.py task=llm_lora data=chat_jsonl`) and llm.lora in the LLM config.
#   DATA=my_chats.jsonl bash recipes/compare_finetuned_llm.sh [llm=smollm2_offline] ...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; cd "$root"
py=.venv/bin/python
if [ ! -f train.py ]; then
  echo "compare_finetuned_llm: train.py is not in this checkout yet (LoRA fine-tuning is coming); nothing run" >&2
  exit 3
fi
adapter="${ADAPTER:-outputs/lora/$(date +%Y-%m-%d_%H-%M-%S)}"
$py train.py task=llm_lora data=chat_jsonl data.path="${DATA:?set DATA=<chat .jsonl file>}" output_dir="$adapter"
$py run.py -m "llm.lora=null,$adapter" "$@"
$py tracking/compare.py --parent latest --plot outputs/finetuned_llm_breakdown.png \
  --metrics median_voice_to_voice_ms,median_llm_ttft_ms,median_first_clause_ms,median_round_trip_wer,turn_errors
