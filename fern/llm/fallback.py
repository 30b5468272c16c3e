"""FallbackLLM: any LLM wrapped with the ones that answer when it fails (Gemini -> local; a GPU model -> the offline
one), and an apology as the last resort.

What a failure does to the turn (each counted in the StreamInfo the stream returns, and in ``self.fallbacks``):
- before any text (no first token in time, an HTTP error, a crash, a stream broken early) -> the next model answers
  the whole turn; when every model failed, the reply is the ``apology`` line;
- after some text was already streamed (and maybe spoken) -> the reply ends with the apology: re-answering from
  scratch with another model would repeat what the user already heard.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from fern.errors import LlmStreamError
from fern.events import CancelToken, StreamInfo
from fern.protocols import LanguageModel

log = logging.getLogger(__name__)


@dataclass
class FallbackLLMConfig:
    _target_: str = "fern.llm.fallback.FallbackLLM"
    primary: Any = MISSING  # an llm config; built first, so its own checks (an API key) fail before the others load
    # name -> llm config, tried in order (a dict, not a list: Hydra's defaults list can place a preset at a key)
    fallbacks: dict[str, Any] = field(default_factory=dict)
    apology: str = "Sorry, I lost my train of thought. Could you say that again?"


SCHEMAS = {"llm": {"fallback": FallbackLLMConfig}}


class FallbackLLM:
    def __init__(self, primary: LanguageModel, fallbacks: Sequence[LanguageModel] | Mapping[str, LanguageModel] = (),
                 apology: str = FallbackLLMConfig.apology) -> None:
        chain = list(fallbacks.values()) if isinstance(fallbacks, Mapping) else list(fallbacks)
        self.primary, self.fallbacks_chain, self.apology = primary, chain, apology
        self.name = primary.name
        self.fallbacks = 0  # turns that did not come (only) from the primary

    def __repr__(self) -> str:
        return f"FallbackLLM({self.primary!r} -> {self.fallbacks_chain!r})"

    def count_tokens(self, text: str) -> int:
        return self.primary.count_tokens(text)

    def stream(self, messages: Sequence[dict[str, str]], cancel: CancelToken) -> Generator[str, None, StreamInfo]:
        errors: list[str] = []
        first_reason: str | None = None
        for model in (self.primary, *self.fallbacks_chain):
            said = 0
            try:
                info = yield from _counted(model.stream(messages, cancel), model)
                if model is self.primary:
                    return info
                info.fallback, info.fallback_reason = True, first_reason
                info.error = "; ".join(errors)
                return info
            except _Said as partial:
                said, failure = partial.n, partial.failure
            except Exception as exc:  # noqa: BLE001 - any failure of one model is the next one's turn
                failure = exc
            reason = failure.reason if isinstance(failure, LlmStreamError) else type(failure).__name__
            errors.append(f"{model.name}: {failure}")
            first_reason = first_reason or reason
            if model is self.primary:
                self.fallbacks += 1
            log.warning("%s failed (%s)%s", model.name, failure,
                        "; ending the reply with the apology" if said else "; trying the next model")
            if said:
                if not cancel.cancelled:
                    yield " " + self.apology
                return StreamInfo(backend=f"{model.name}+apology", n_tokens=said + 1, fallback=True,
                                  fallback_reason=reason, error="; ".join(errors))
        if not cancel.cancelled:
            yield self.apology
        return StreamInfo(backend="apology", n_tokens=1, fallback=True, fallback_reason=first_reason,
                          error="; ".join(errors))


class _Said(Exception):
    """A model failed after it had already streamed ``n`` pieces."""

    def __init__(self, n: int, failure: BaseException) -> None:
        super().__init__(str(failure))
        self.n, self.failure = n, failure


def _counted(pieces: Generator[str, None, Any], model: LanguageModel) -> Generator[str, None, StreamInfo]:
    n = 0
    try:
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                info = end.value if isinstance(end.value, StreamInfo) else StreamInfo(backend=model.name)
                info.n_tokens = info.n_tokens or n
                return info
            n += 1
            yield piece
    except GeneratorExit:
        raise
    except Exception as exc:  # noqa: BLE001
        if n:
            raise _Said(n, exc) from exc
        raise
    finally:
        pieces.close()
