"""Schemas of the llm config group (see fern.config.schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class HFCausalLMConfig:
    _target_: str = "fern.llm.hf.HFCausalLM"
    model: str = MISSING  # hub repo id or local dir
    gguf_file: Optional[str] = None  # load a GGUF file from ``model`` (dir) with transformers + gguf
    device: str = "${device}"
    dtype: str = "auto"  # auto (bf16 on a GPU when bf16, else float32) | float32 | bfloat16 | float16
    bf16: bool = "${optim.bf16}"  # type: ignore[assignment]
    attn_implementation: str = "${optim.attn_implementation}"
    max_new_tokens: int = 120
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    compile: bool = "${optim.compile}"  # type: ignore[assignment]
    static_cache: bool = "${optim.static_cache}"  # type: ignore[assignment]
    lora: Optional[str] = None  # peft adapter dir (train.py task=llm_lora's <out_dir>/adapter), merged at load


@dataclass
class GeminiConfig:
    _target_: str = "fern.llm.gemini.GeminiLLM"
    # GeminiLLM builds its fallback itself, after checking the API key: a missing key must fail in milliseconds
    _recursive_: bool = False
    model: str = "gemini-2.5-flash-lite"
    max_output_tokens: int = 150
    temperature: float = 0.7
    thinking_budget: int = 0
    ttft_timeout_ms: int = 2500
    api_base_url: Optional[str] = None  # for self-hosted gateways and the tests' local server
    stall_timeout_ms: int = 10000  # a stream silent this long after its first token counts as broken
    fallback: Optional[Any] = None  # another llm config (built at start-up), or null to speak ``apology``
    preload_fallback: bool = True
    apology: str = "Sorry, I lost my train of thought. Could you say that again?"


SCHEMAS: dict[str, dict[str, type]] = {"llm": {"hf": HFCausalLMConfig, "gemini": GeminiConfig}}
