"""Token-budgeted chat history shared by every LLM backend.

The window always starts with the system prompt, then whole turns. When the total goes over ``max_tokens`` the oldest
turns are dropped — not one at a time but down to ``low_water`` of the budget, so the kept prefix stays the same for
several turns and a local model's prefix KV cache (fern.llm.hf) keeps being reused. The newest user message is never
dropped, even if it alone is over the budget.
"""

from __future__ import annotations

from collections.abc import Callable

from fern.errors import ConfigValueError

# Chat templates add a few tokens around each message (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 4


def approx_token_count(text: str) -> int:
    """Cheap stand-in when no tokenizer is at hand: ~4 characters per token for English, at least one per word."""
    return max(len(text.split()), (len(text) + 3) // 4)


class ChatHistory:
    def __init__(
        self,
        system_prompt: str,
        max_tokens: int,
        count_tokens: Callable[[str], int] | None = None,
        low_water: float = 0.75,
    ) -> None:
        if max_tokens < 1:
            raise ConfigValueError(f"dialogue.history_max_tokens must be >= 1, got {max_tokens}")
        if not 0.0 < low_water <= 1.0:
            raise ConfigValueError(f"low_water must be in (0, 1], got {low_water}")
        self.system_prompt = system_prompt
        self.max_tokens = int(max_tokens)
        self.low_water = low_water
        self.count_tokens = count_tokens or approx_token_count
        self._messages: list[dict[str, str]] = []  # user/assistant messages, oldest first
        self._costs: list[int] = []
        self._start = 0  # index of the first message in the window
        self._system_cost = self._cost(system_prompt) if system_prompt else 0
        self.turns = 0  # user turns added so far (dropped ones included)
        self.dropped_turns = 0

    def _cost(self, text: str) -> int:
        return self.count_tokens(text) + MESSAGE_OVERHEAD_TOKENS

    def add_user(self, text: str) -> None:
        self._append("user", text)
        self.turns += 1

    def add_assistant(self, text: str) -> None:
        """Add what the agent said (after a barge-in, only the part that was spoken)."""
        if not text:
            return
        self._append("assistant", text)

    def clear(self) -> None:
        self._messages.clear()
        self._costs.clear()
        self._start = 0

    def _append(self, role: str, text: str) -> None:
        if self._messages[self._start:] and self._messages[-1]["role"] == role:
            # Two messages of the same role in a row (e.g. a user turn whose reply was cancelled before any word was
            # spoken): merge them, chat templates expect alternation.
            last = self._messages[-1]
            last["content"] = f"{last['content']} {text}".strip()
            self._costs[-1] = self._cost(last["content"])
        else:
            self._messages.append({"role": role, "content": text})
            self._costs.append(self._cost(text))
        self._trim()

    def window_tokens(self) -> int:
        return self._system_cost + sum(self._costs[self._start:])

    def _trim(self) -> None:
        if self.window_tokens() <= self.max_tokens:
            return
        target = int(self.max_tokens * self.low_water)
        newest_user = max(i for i, m in enumerate(self._messages) if m["role"] == "user") if any(
            m["role"] == "user" for m in self._messages) else len(self._messages) - 1
        total = self.window_tokens()
        start = self._start
        while start < newest_user and total > target:
            total -= self._costs[start]
            if self._messages[start]["role"] == "user":
                self.dropped_turns += 1
            start += 1
        # The window must start with a user message (templates and APIs expect it).
        while start < newest_user and self._messages[start]["role"] != "user":
            start += 1
        self._start = start

    def messages(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        out.extend(dict(m) for m in self._messages[self._start:])
        return out
