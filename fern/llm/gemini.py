"""Gemini through google-genai (streaming), with deadlines: a stream that is slow to start, stalls or breaks raises
LlmStreamError with a reason (ttft_timeout, stalled, auth, http_<code>, connection, stream_broken, empty_reply).
What the turn does then is fern.llm.fallback.FallbackLLM's business (conf/llm/gemini.yaml wraps Gemini in it: the
local model answers, or an apology ends a reply that had already started).

The key comes from GOOGLE_API_KEY (preferred) or GEMINI_API_KEY; it is handed to the client and nowhere else (not
logged, not in repr, not in the config).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from fern.errors import ConfigValueError, LlmStreamError, MissingSecretError
from fern.events import CancelToken, StreamInfo
from fern.llm.history import approx_token_count
from fern.streams import Failed, Finished, pump

KEY_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
_POLL_S = 0.02


@dataclass
class GeminiConfig:
    _target_: str = "fern.llm.gemini.GeminiLLM"
    model: str = "gemini-2.5-flash-lite"
    max_output_tokens: int = 150
    temperature: float = 0.7
    thinking_budget: int = 0
    ttft_timeout_ms: int = 2500
    stall_timeout_ms: int = 10000  # a stream silent this long after its first token counts as broken
    api_base_url: Optional[str] = None  # for self-hosted gateways and the tests' local server


SCHEMAS = {"llm": {"gemini": GeminiConfig}}


def api_key_from_env() -> str:
    for var in KEY_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    raise MissingSecretError(
        "llm=gemini needs an API key: set GOOGLE_API_KEY (or GEMINI_API_KEY) in the environment "
        "(get one at https://aistudio.google.com/apikey), or pick a local model, e.g. llm=smollm2_offline"
    )


def to_gemini(messages: Sequence[dict[str, str]]) -> tuple[str | None, list[dict[str, Any]]]:
    """{"role","content"} chat messages → (system instruction, Gemini contents). assistant → model."""
    system = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    contents: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "system":
            continue
        role = "model" if m["role"] in ("assistant", "model") else "user"
        if contents and contents[-1]["role"] == role:  # Gemini wants alternating roles
            contents[-1]["parts"].append({"text": m["content"]})
        else:
            contents.append({"role": role, "parts": [{"text": m["content"]}]})
    return ("\n\n".join(system) if system else None), contents


class _Incomplete(Exception):
    pass


class GeminiLLM:
    def __init__(
        self,
        model: str = GeminiConfig.model,
        max_output_tokens: int = GeminiConfig.max_output_tokens,
        temperature: float = GeminiConfig.temperature,
        thinking_budget: int = GeminiConfig.thinking_budget,
        ttft_timeout_ms: int = GeminiConfig.ttft_timeout_ms,
        stall_timeout_ms: int = GeminiConfig.stall_timeout_ms,
        api_base_url: str | None = None,
    ) -> None:
        if ttft_timeout_ms <= 0 or stall_timeout_ms <= 0:
            raise ConfigValueError("llm.ttft_timeout_ms and llm.stall_timeout_ms must be > 0")
        api_key = api_key_from_env()  # fail at start-up, before any audio flows
        from google import genai
        from google.genai import types

        self.model = model
        self.name = f"gemini:{model}"
        self.max_output_tokens = int(max_output_tokens)
        self.temperature = float(temperature)
        self.thinking_budget = thinking_budget
        self.ttft_timeout_s = ttft_timeout_ms / 1000.0
        self.stall_timeout_s = stall_timeout_ms / 1000.0
        http_options = types.HttpOptions(
            base_url=api_base_url,
            # httpx timeout: bounds a worker left behind by a ttft timeout; the turn itself never waits this long.
            timeout=int(max(stall_timeout_ms, ttft_timeout_ms) + 1000),
        )
        self._client = genai.Client(api_key=api_key, http_options=http_options)
        del api_key

    def __repr__(self) -> str:
        return f"GeminiLLM(model={self.model!r})"

    def count_tokens(self, text: str) -> int:
        return approx_token_count(text)  # a tokenizer round trip to the API per message would cost more than it saves

    def _config(self, system: str | None):
        from google.genai import types

        kw: dict[str, Any] = {
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
        }
        if system:
            kw["system_instruction"] = system
        if self.thinking_budget is not None and self.thinking_budget >= 0:
            kw["thinking_config"] = types.ThinkingConfig(thinking_budget=self.thinking_budget)
        return types.GenerateContentConfig(**kw)

    def _texts(self, system: str | None, contents: list) -> Generator[str, None, None]:
        """The HTTP stream as text pieces; raises _Incomplete when the body ends without a finishReason."""
        finished = False
        for chunk in self._client.models.generate_content_stream(model=self.model, contents=contents,
                                                                 config=self._config(system)):
            cand = chunk.candidates[0] if chunk.candidates else None
            if cand is not None and cand.finish_reason:
                finished = True
            parts = (cand.content.parts or []) if cand is not None and cand.content else []
            text = "".join(p.text for p in parts if p.text and not p.thought)
            if text:
                yield text
        if not finished:  # every complete Gemini stream ends with one; without it the body was cut short
            raise _Incomplete("stream ended without a finishReason")

    @staticmethod
    def _describe(e: BaseException) -> tuple[str, str]:
        from google.genai import errors as gerr

        if isinstance(e, gerr.APIError):
            code = getattr(e, "code", None)
            status = getattr(e, "status", None) or ""
            msg = (getattr(e, "message", None) or "").split("\n")[0][:200]
            if code in (401, 403) or "API_KEY" in str(e) or status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                return "auth", f"HTTP {code} {status}: {msg} (check GOOGLE_API_KEY / GEMINI_API_KEY)"
            return f"http_{code}", f"HTTP {code} {status}: {msg}"
        if isinstance(e, _Incomplete):
            return "stream_broken", str(e)
        name = type(e).__name__
        if "Protocol" in name or "ReadError" in name or "Incomplete" in name or "RemoteDisconnected" in name:
            return "stream_broken", f"{name}: {str(e)[:200]}"
        return "connection", f"{name}: {str(e)[:200]}"

    def stream(self, messages: Sequence[dict[str, str]], cancel: CancelToken) -> Generator[str, None, StreamInfo]:
        """Text pieces as they arrive; the HTTP stream is read in a daemon thread so that deadlines hold even while
        the client blocks on the socket."""
        info = StreamInfo(backend=self.name)
        system, contents = to_gemini(messages)
        out: queue.Queue = queue.Queue()
        gone = threading.Event()
        threading.Thread(target=lambda: pump(self._texts(system, contents), out.put, gone.is_set), daemon=True,
                         name="gemini-stream").start()
        t0 = time.perf_counter()
        deadline = t0 + self.ttft_timeout_s
        try:
            while True:
                if cancel.cancelled:
                    info.cancelled = True
                    return info
                now = time.perf_counter()
                if now >= deadline:
                    if info.n_tokens == 0:
                        raise LlmStreamError("ttft_timeout",
                                             f"no first token within {self.ttft_timeout_s * 1000:.0f} ms")
                    raise LlmStreamError("stalled", f"no token for {self.stall_timeout_s:.1f} s")
                try:
                    item = out.get(timeout=min(_POLL_S, deadline - now))
                except queue.Empty:
                    continue
                if isinstance(item, Finished):
                    if info.n_tokens == 0:
                        raise LlmStreamError("empty_reply", "Gemini finished without any text (blocked or empty)")
                    return info
                if isinstance(item, Failed):
                    raise LlmStreamError(*self._describe(item.exc))
                if info.n_tokens == 0:
                    info.ttft_s = time.perf_counter() - t0
                info.n_tokens += 1  # Gemini chunks, not tokens: the count of streamed pieces
                deadline = time.perf_counter() + self.stall_timeout_s
                yield item
        finally:
            gone.set()
