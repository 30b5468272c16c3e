"""GeminiLLM (and FallbackLLM around it): the real google-genai client against a local server speaking Gemini's
streaming REST protocol."""

from __future__ import annotations

import logging
import time

import pytest

from fern.errors import MissingSecretError
from fern.events import CancelToken
from fern.llm.fallback import FallbackLLM
from fern.llm.gemini import GeminiLLM, to_gemini
from fern.protocols import LanguageModel
from fern.streams import drain

from .gemini_server import GOOD_KEY, REPLY, GeminiServer

MSGS = [
    {"role": "system", "content": "You are FERN. Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is the capital of France?"},
]
APOLOGY = "Sorry, say that again?"


@pytest.fixture
def server():
    with GeminiServer(slow_s=1.5) as s:
        yield s


@pytest.fixture
def key(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", GOOD_KEY)


def make(server, model="normal", fallback=None, **kw) -> FallbackLLM:
    """Gemini as conf/llm/gemini.yaml builds it: wrapped in FallbackLLM."""
    # generous unless a test is about the timeout: on a loaded 2-core CI machine the first request of a process
    # (client set-up) once took over 1 s, and a 401 was reported as ttft_timeout
    kw.setdefault("ttft_timeout_ms", 10000)
    gemini = GeminiLLM(model=model, api_base_url=server.base_url, **kw)
    return FallbackLLM(gemini, [fallback] if fallback is not None else [], apology=APOLOGY)


def test_normal_stream_and_request_shape(server, key, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    llm = make(server)
    assert isinstance(llm, LanguageModel)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert pieces == REPLY
    assert info.fallback is False and info.error is None and info.backend == "gemini:normal"
    assert info.n_tokens == 3 and info.ttft_s is not None and llm.fallbacks == 0
    req = server.requests[-1]
    assert req["path"].startswith("/v1") and req["path"].endswith("/models/normal:streamGenerateContent?alt=sse")
    assert req["headers"]["x-goog-api-key"] == GOOD_KEY
    body = req["body"]
    assert body["systemInstruction"]["parts"][0]["text"] == "You are FERN. Be brief."
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["generationConfig"]["maxOutputTokens"] == 150
    thinking = body["generationConfig"]["thinkingConfig"]  # this SDK sends snake_case here; the API accepts both
    assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 0
    # The key is never logged nor shown.
    assert GOOD_KEY not in repr(llm) and GOOD_KEY not in caplog.text
    assert GOOD_KEY not in repr(llm.primary) and GOOD_KEY not in str(vars(llm.primary))


def test_slow_first_token_within_timeout_is_fine(server, key) -> None:
    server.slow_s = 0.3
    llm = make(server, model="slow", ttft_timeout_ms=2000)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert "".join(pieces) == "".join(REPLY)
    assert info.fallback is False and info.ttft_s >= 0.3


def test_slow_first_token_times_out_to_apology(server, key) -> None:
    llm = make(server, model="slow", ttft_timeout_ms=300)
    t0 = time.perf_counter()
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert time.perf_counter() - t0 < 1.2  # did not wait for the slow server (1.5 s)
    assert pieces == [APOLOGY]
    assert info.fallback and info.fallback_reason == "ttft_timeout" and info.backend == "apology"
    assert llm.fallbacks == 1


@pytest.mark.parametrize("model,reason", [("err500", "http_500"), ("badkey", "auth"), ("badkey400", "auth"),
                                          ("nofinish", None), ("empty", "empty_reply")])
def test_http_errors_fall_back_to_apology(server, key, model, reason) -> None:
    llm = make(server, model=model)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert info.fallback is True and llm.fallbacks == 1
    if model == "nofinish":  # text streamed, then the body ended without finishReason: apology appended
        assert pieces == REPLY + [" " + APOLOGY] and info.fallback_reason == "stream_broken"
        return
    assert pieces == [APOLOGY] and info.fallback_reason == reason
    if reason == "auth":
        assert "GOOGLE_API_KEY" in info.error and GOOD_KEY not in info.error


def test_wrong_key_is_401_auth(server, monkeypatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "wrong-key")
    llm = make(server)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert pieces == [APOLOGY]
    assert info.fallback_reason == "auth" and "401" in info.error


def test_stream_cut_mid_reply_ends_with_apology(server, key) -> None:
    llm = make(server, model="cut")
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert pieces == REPLY[:2] + [" " + APOLOGY]
    assert info.fallback and info.fallback_reason == "stream_broken" and info.backend.endswith("+apology")


def test_session_goes_on_after_failures(server, key) -> None:
    llm = make(server, model="err500")
    list(llm.stream(MSGS, CancelToken()))
    llm.primary.model = "normal"
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert pieces == REPLY
    assert llm.fallbacks == 1 and info.fallback is False


def test_cancel_stops_the_stream(server, key) -> None:
    llm = make(server)
    cancel = CancelToken()
    got = []
    for p in llm.stream(MSGS, cancel):
        got.append(p)
        cancel.cancel()
    assert got == REPLY[:1]


def test_missing_key_fails_at_construction_naming_the_variables(monkeypatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(MissingSecretError, match="GOOGLE_API_KEY.*GEMINI_API_KEY"):
        GeminiLLM(model="normal")


def test_gemini_api_key_variable_also_works(server, monkeypatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", GOOD_KEY)
    assert list(make(server).stream(MSGS, CancelToken())) == REPLY


def test_to_gemini_merges_roles() -> None:
    system, contents = to_gemini([{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                                  {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}])
    assert system == "s"
    assert contents == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                        {"role": "model", "parts": [{"text": "c"}]}]


def test_500_falls_back_to_the_real_local_llm(server, key, smollm2) -> None:
    llm = make(server, model="err500", fallback=smollm2)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert "Paris" in "".join(pieces)
    assert info.fallback and info.backend == smollm2.name and info.n_tokens > 0 and llm.fallbacks == 1


@pytest.mark.models  # builds the real SmolLM2 fallback
def test_gemini_preset_builds_fallback_llm_around_gemini_and_fails_fast_on_a_broken_fallback(
        server, key, compose, tmp_path) -> None:
    """conf/llm/gemini.yaml composes FallbackLLM(Gemini -> local SmolLM2); every model is built at start-up, so a
    fallback whose weights are missing is found then, not in the middle of a conversation."""
    from fern.app import build
    from fern.errors import MissingWeightsError
    from fern.llm.hf import HFCausalLM

    cfg = compose(["llm=gemini", "device=cpu", f"llm.primary.api_base_url={server.base_url}",
                   "llm.primary.model=err500", "llm.fallbacks.local.max_new_tokens=8"])
    llm = build(cfg.llm, "llm")
    assert isinstance(llm.primary, GeminiLLM) and isinstance(llm.fallbacks_chain[0], HFCausalLM)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert info.fallback and info.fallback_reason == "http_500" and info.backend == llm.fallbacks_chain[0].name
    assert "".join(pieces).strip()
    broken = compose(["llm=gemini", "device=cpu", f"llm.fallbacks.local.model={tmp_path}"])
    with pytest.raises(MissingWeightsError, match="scripts/setup.sh"):
        build(broken.llm, "llm")
