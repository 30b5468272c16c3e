"""FallbackLLM around scripted models: who answers when the primary fails before or after it said something."""

from __future__ import annotations

from fern.errors import LlmStreamError
from fern.events import CancelToken
from fern.llm.fallback import FallbackLLM
from fern.protocols import LanguageModel
from fern.streams import drain
from fern.testing import ScriptedLLM

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
APOLOGY = "Sorry?"


class Refuses:
    name = "refuses"

    def count_tokens(self, text):
        return len(text.split())

    def stream(self, messages, cancel):
        yield from ()  # a generator, as every LanguageModel.stream is, that fails before its first piece
        raise LlmStreamError("auth", "HTTP 401")


def test_primary_answers_when_it_works():
    llm = FallbackLLM(ScriptedLLM(["Paris it is."], name="primary", ttft_s=0), [ScriptedLLM(["No."], ttft_s=0)])
    assert isinstance(llm, LanguageModel)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert "".join(pieces) == "Paris it is." and info.backend == "primary" and not info.fallback
    assert llm.fallbacks == 0


def test_failure_before_any_text_goes_to_the_next_model_in_order():
    second = ScriptedLLM(["From the second."], name="second", ttft_s=0)
    llm = FallbackLLM(Refuses(), {"first": ScriptedLLM(["x"], name="first", fail_at=(0, 0)), "second": second},
                      apology=APOLOGY)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert "".join(pieces) == "From the second." and info.backend == "second"
    assert info.fallback and info.fallback_reason == "auth" and "401" in info.error and "first" in info.error
    assert llm.fallbacks == 1 and second.calls == [MSGS]


def test_failure_mid_reply_ends_with_the_apology_instead_of_answering_twice():
    backup = ScriptedLLM(["Never used."], ttft_s=0)
    llm = FallbackLLM(ScriptedLLM(["Paris is the capital of France."], name="p", ttft_s=0, token_s=0,
                                  fail_at=(0, 3)), [backup], apology=APOLOGY)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert pieces == ["Paris", " is", " the", " " + APOLOGY]
    assert info.backend == "p+apology" and info.fallback_reason == "RuntimeError" and backup.calls == []


def test_every_model_failing_gives_the_apology():
    llm = FallbackLLM(Refuses(), [Refuses()], apology=APOLOGY)
    pieces, info = drain(llm.stream(MSGS, CancelToken()))
    assert pieces == [APOLOGY] and info.backend == "apology" and info.error.count("401") == 2


def test_cancel_passes_through_to_the_model():
    primary = ScriptedLLM(["one two three four five"], ttft_s=0, token_s=0.01)
    llm = FallbackLLM(primary, [])
    cancel = CancelToken()
    stream = llm.stream(MSGS, cancel)
    first = next(stream)
    cancel.cancel()
    rest, info = drain(stream)
    assert first == "one" and rest == [] and info.cancelled and primary.streamed == [1]
