from __future__ import annotations

from fern.llm.history import MESSAGE_OVERHEAD_TOKENS, ChatHistory


def words(text: str) -> int:
    return len(text.split())


def test_system_first_and_alternation() -> None:
    h = ChatHistory("be brief", max_tokens=1000, count_tokens=words)
    h.add_user("hi there")
    h.add_assistant("hello")
    h.add_user("how are you")
    assert h.messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
    ]
    assert h.turns == 2


def test_oldest_turns_dropped_first_within_budget() -> None:
    per = 10 + MESSAGE_OVERHEAD_TOKENS
    h = ChatHistory("", max_tokens=5 * per, count_tokens=words)
    for i in range(20):
        h.add_user(f"u{i} " + "w " * 9)
        h.add_assistant(f"a{i} " + "w " * 9)
        msgs = h.messages()
        assert h.window_tokens() <= 5 * per
        assert msgs[0]["role"] == "user"
        assert msgs[-1]["content"].startswith(f"a{i}")
    contents = [m["content"].split()[0] for m in h.messages()]
    # Contiguous newest turns survive, oldest are gone.
    assert contents[-1] == "a19" and "u0" not in contents
    idx = [int(c[1:]) for c in contents]
    assert idx == sorted(idx)
    assert h.dropped_turns > 0 and h.turns == 20


def test_newest_user_message_never_dropped_even_over_budget() -> None:
    h = ChatHistory("sys prompt here", max_tokens=10, count_tokens=words)
    h.add_user("old question")
    h.add_assistant("old answer")
    long = "word " * 50
    h.add_user(long)
    msgs = h.messages()
    assert msgs[0]["role"] == "system"
    assert msgs[-1] == {"role": "user", "content": long}
    assert len(msgs) == 2


def test_window_prefix_is_stable_between_trims() -> None:
    """Dropping down to low_water keeps the same first turn for several turns (prefix KV cache reuse)."""
    h = ChatHistory("s", max_tokens=200, count_tokens=words)
    firsts = []
    for i in range(30):
        h.add_user(f"q{i} " + "x " * 8)
        h.add_assistant(f"r{i} " + "x " * 8)
        firsts.append(h.messages()[1]["content"])
    changes = sum(1 for a, b in zip(firsts, firsts[1:]) if a != b)
    assert 0 < changes < 15


def test_consecutive_same_role_merged_and_default_counter() -> None:
    h = ChatHistory("sys", max_tokens=100)
    h.add_user("first")
    h.add_user("second")
    h.add_assistant("")
    assert h.messages()[1:] == [{"role": "user", "content": "first second"}]
    assert h.window_tokens() > 0
