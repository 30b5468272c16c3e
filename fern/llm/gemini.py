"""Gemini through google-genai (streaming), with fallbacks that keep the conversation alive.

Faults and what the turn does (each counted in ``last_stream_info`` and ``self.fallbacks``):
- no first token within ``ttft_timeout_ms``, an HTTP error (401/403 bad key, 429, 5xx), a connection failure, or a
  stream that breaks before any text → the whole reply comes from the local ``fallback`` LLM, or is the ``apology``
  line when there is none (or the fallback fails too);
- a stream that breaks after some text was already streamed (and maybe spoken) → the reply ends with the apology line:
  re-answering from scratch with another model would repeat what the user already heard.

The key comes from GOOGLE_API_KEY (preferred) or GEMINI_API_KEY; it is handed to the client and nowhere else (not
logged, not in repr, not in the config).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from fern.errors import ConfigValueError, MissingSecretError
from fern.events import CancelToken
from fern.llm.history import approx_token_count

log = logging.getLogger(__name__)

KEY_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
_DONE = object()
_POLL_S = 0.02


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


class _StreamFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class GeminiLLM:
    def __init__(
        self,
        model: str = "gemini-2.5-flash-lite",
        max_output_tokens: int = 150,
        temperature: float = 0.7,
        thinking_budget: int = 0,
        ttft_timeout_ms: int = 2500,
        api_base_url: str | None = None,
        fallback: Any = None,
        apology: str = "Sorry, I lost my train of thought. Could you say that again?",
        stall_timeout_ms: int = 10000,
        preload_fallback: bool = True,
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
        self.apology = apology
        http_options = types.HttpOptions(
            base_url=api_base_url,
            # httpx timeout: bounds a worker left behind by a ttft timeout; the turn itself never waits this long.
            timeout=int(max(stall_timeout_ms, ttft_timeout_ms) + 1000),
        )
        self._client = genai.Client(api_key=api_key, http_options=http_options)
        del api_key
        self._fallback_cfg = fallback
        self._fallback = None
        self._fallback_lock = threading.Lock()
        self.fallbacks = 0
        self.last_stream_info: dict[str, Any] = {"backend": self.name, "fallback": False, "n_tokens": 0, "error": None}
        if fallback is not None and preload_fallback:
            self._get_fallback()

    def __repr__(self) -> str:
        return f"GeminiLLM(model={self.model!r}, fallback={'yes' if self._fallback_cfg is not None else 'apology'})"

    def count_tokens(self, text: str) -> int:
        fb = self._fallback
        if fb is not None and hasattr(fb, "count_tokens"):
            return fb.count_tokens(text)
        return approx_token_count(text)

    def _get_fallback(self):
        if self._fallback_cfg is None:
            return None
        with self._fallback_lock:
            if self._fallback is None:
                cfg = self._fallback_cfg
                if hasattr(cfg, "stream"):  # already a LanguageModel
                    self._fallback = cfg
                else:
                    from hydra.utils import instantiate

                    self._fallback = instantiate(cfg)
        return self._fallback

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

    def _worker(self, system, contents, out: queue.Queue, stop: threading.Event) -> None:
        it = None
        try:
            it = self._client.models.generate_content_stream(model=self.model, contents=contents,
                                                             config=self._config(system))
            finished = False
            for chunk in it:
                if stop.is_set():
                    return
                cand = chunk.candidates[0] if chunk.candidates else None
                if cand is not None and cand.finish_reason:
                    finished = True
                parts = (cand.content.parts or []) if cand is not None and cand.content else []
                text = "".join(p.text for p in parts if p.text and not p.thought)
                if text:
                    out.put(text)
            # Every complete Gemini stream ends with a finishReason; without one the body was cut short.
            out.put(_DONE if finished else _Incomplete("stream ended without a finishReason"))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the consumer
            out.put(e)
        finally:
            if it is not None and hasattr(it, "close"):
                try:
                    it.close()
                except Exception:  # noqa: BLE001
                    pass

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

    def _gemini_pieces(self, messages, cancel: CancelToken, info: dict) -> Iterator[str]:
        system, contents = to_gemini(messages)
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        worker = threading.Thread(target=self._worker, args=(system, contents, out, stop), daemon=True,
                                  name="gemini-stream")
        t0 = time.perf_counter()
        worker.start()
        first = True
        deadline = t0 + self.ttft_timeout_s
        try:
            while True:
                if cancel.cancelled:
                    info["cancelled"] = True
                    return
                now = time.perf_counter()
                if now >= deadline:
                    if first:
                        raise _StreamFailed("ttft_timeout", f"no first token within {self.ttft_timeout_s * 1000:.0f} ms")
                    raise _StreamFailed("stalled", f"no token for {self.stall_timeout_s:.1f} s")
                try:
                    item = out.get(timeout=min(_POLL_S, deadline - now))
                except queue.Empty:
                    continue
                if item is _DONE:
                    if first:
                        raise _StreamFailed("empty_reply", "Gemini finished without any text (blocked or empty)")
                    return
                if isinstance(item, BaseException):
                    raise _StreamFailed(*self._describe(item))
                if first:
                    info["ttft_s"] = time.perf_counter() - t0
                    first = False
                deadline = time.perf_counter() + self.stall_timeout_s
                yield item
        finally:
            stop.set()

    def stream(self, messages: Sequence[dict[str, str]], cancel: CancelToken) -> Iterator[str]:
        info: dict[str, Any] = {"backend": self.name, "fallback": False, "fallback_reason": None, "n_tokens": 0,
                                "error": None, "ttft_s": None, "cancelled": False}
        self.last_stream_info = info
        said: list[str] = []
        try:
            for piece in self._gemini_pieces(messages, cancel, info):
                said.append(piece)
                info["n_tokens"] += 1  # Gemini chunks, not tokens: the count of streamed pieces
                yield piece
            return
        except _StreamFailed as e:
            failure = e
        self.fallbacks += 1
        info["fallback"] = True
        info["fallback_reason"] = failure.reason
        info["error"] = failure.detail
        log.warning("gemini %s (%s); falling back to %s", failure.reason, failure.detail,
                    "the apology" if said or self._fallback_cfg is None else "the local LLM")
        if said:
            info["backend"] = f"{self.name}+apology"
            if not cancel.cancelled:
                yield " " + self.apology
            return
        fb = None
        try:
            fb = self._get_fallback()
        except Exception as e:  # noqa: BLE001 - a broken fallback must not end the session
            info["error"] += f"; fallback could not start: {type(e).__name__}: {e}"
            log.error("fallback LLM could not start: %s", e)
        if fb is not None:
            info["backend"] = getattr(fb, "name", "fallback")
            n = 0
            try:
                for piece in fb.stream(messages, cancel):
                    n += 1
                    info["n_tokens"] = n
                    yield piece
                return
            except Exception as e:  # noqa: BLE001
                info["error"] += f"; fallback failed: {type(e).__name__}: {e}"
                log.error("fallback LLM failed: %s", e)
                if n:
                    return
        info["backend"] = "apology"
        if not cancel.cancelled:
            yield self.apology
