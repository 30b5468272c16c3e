"""GeminiLLM: the real google-genai client against a local server speaking Gemini's streaming REST protocol."""

from __future__ import annotations

import logging
import time

import pytest

from fern.errors import MissingSecretError
from fern.events import CancelToken
from fern.llm.gemini import GeminiLLM, to_gemini
from fern.protocols import LanguageModel

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


def make(server, model="normal", fallback=None, **kw) -> GeminiLLM:
    kw.setdefault("ttft_timeout_ms", 1000)
    return GeminiLLM(model=model, api_base_url=server.base_url, fallback=fallback, apology=APOLOGY, **kw)


def test_normal_stream_and_request_shape(server, key, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    llm = make(server)
    assert isinstance(llm, LanguageModel)
    pieces = list(llm.stream(MSGS, CancelToken()))
    assert pieces == REPLY
    info = llm.last_stream_info
    assert info["fallback"] is False and info["error"] is None and info["backend"] == "gemini:normal"
    assert info["n_tokens"] == 3 and info["ttft_s"] is not None and llm.fallbacks == 0
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
    assert GOOD_KEY not in str(vars(llm).get("_fallback_cfg"))


def test_slow_first_token_within_timeout_is_fine(server, key) -> None:
    server.slow_s = 0.3
    llm = make(server, model="slow", ttft_timeout_ms=2000)
    assert "".join(llm.stream(MSGS, CancelToken())) == "".join(REPLY)
    assert llm.last_stream_info["fallback"] is False and llm.last_stream_info["ttft_s"] >= 0.3


def test_slow_first_token_times_out_to_apology(server, key) -> None:
    llm = make(server, model="slow", ttft_timeout_ms=300)
    t0 = time.perf_counter()
    pieces = list(llm.stream(MSGS, CancelToken()))
    assert time.perf_counter() - t0 < 1.2  # did not wait for the slow server (1.5 s)
    assert pieces == [APOLOGY]
    info = llm.last_stream_info
    assert info["fallback"] and info["fallback_reason"] == "ttft_timeout" and info["backend"] == "apology"
    assert llm.fallbacks == 1


@pytest.mark.parametrize("model,reason", [("err500", "http_500"), ("badkey", "auth"), ("badkey400", "auth"),
                                          ("nofinish", None), ("empty", "empty_reply")])
def test_http_errors_fall_back_to_apology(server, key, model, reason) -> None:
    llm = make(server, model=model)
    pieces = list(llm.stream(MSGS, CancelToken()))
    info = llm.last_stream_info
    assert info["fallback"] is True and llm.fallbacks == 1
    if model == "nofinish":  # text streamed, then the body ended without finishReason: apology appended
        assert pieces == REPLY + [" " + APOLOGY] and info["fallback_reason"] == "stream_broken"
        return
    assert pieces == [APOLOGY] and info["fallback_reason"] == reason
    if reason == "auth":
        assert "GOOGLE_API_KEY" in info["error"] and GOOD_KEY not in info["error"]


def test_wrong_key_is_401_auth(server, monkeypatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "wrong-key")
    llm = make(server)
    assert list(llm.stream(MSGS, CancelToken())) == [APOLOGY]
    assert llm.last_stream_info["fallback_reason"] == "auth" and "401" in llm.last_stream_info["error"]


def test_stream_cut_mid_reply_ends_with_apology(server, key) -> None:
    llm = make(server, model="cut")
    pieces = list(llm.stream(MSGS, CancelToken()))
    assert pieces == REPLY[:2] + [" " + APOLOGY]
    info = llm.last_stream_info
    assert info["fallback"] and info["fallback_reason"] == "stream_broken" and info["backend"].endswith("+apology")


def test_session_goes_on_after_failures(server, key) -> None:
    llm = make(server, model="err500")
    list(llm.stream(MSGS, CancelToken()))
    llm.model = "normal"
    assert list(llm.stream(MSGS, CancelToken())) == REPLY
    assert llm.fallbacks == 1 and llm.last_stream_info["fallback"] is False


def test_cancel_stops_the_stream(server, key) -> None:
    llm = make(server)
    cancel = CancelToken()
    got = []
    for p in llm.stream(MSGS, cancel):
        got.append(p)
        cancel.cancel()
    assert got == REPLY[:1] and llm.last_stream_info["cancelled"]


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
    text = "".join(llm.stream(MSGS, CancelToken()))
    info = llm.last_stream_info
    assert "Paris" in text
    assert info["fallback"] and info["backend"] == smollm2.name and info["n_tokens"] > 0 and llm.fallbacks == 1


def test_fallback_built_from_config_with_hydra(server, key, tmp_path) -> None:
    """A nested llm config (as conf/llm/gemini.yaml composes it) is instantiated; a broken one still apologises."""
    from omegaconf import OmegaConf

    bad = OmegaConf.create({"_target_": "fern.llm.hf.HFCausalLM", "model": str(tmp_path), "gguf_file": "x.gguf",
                            "device": "cpu"})
    llm = make(server, model="err500", fallback=bad, preload_fallback=False)
    assert list(llm.stream(MSGS, CancelToken())) == [APOLOGY]
    assert "scripts/setup.sh" in llm.last_stream_info["error"]
