"""The clause chunker on a table of tricky strings, fed whole, word by word and character by character."""

from __future__ import annotations

import re

import pytest

from fern.chunker.clause import ClauseChunker
from fern.protocols import Chunker


def run(text: str, pieces: str, **kw) -> list[str]:
    ch = ClauseChunker(**kw)
    if pieces == "whole":
        parts = [text]
    elif pieces == "chars":
        parts = list(text)
    else:  # LLM-like tokens: words with their leading space
        parts = re.findall(r"\s*\S+", text) + ([text[len(text.rstrip()):]] if text != text.rstrip() else [])
    out: list[str] = []
    for p in parts:
        out += ch.push(p)
    return out + ch.flush()


TABLE = [
    # (text, expected chunks) with the defaults first_min_words=3, min_words=6, max_words=30
    ("Sure. The capital of France is Paris.", ["Sure.", "The capital of France is Paris."]),
    ("Pi is about 3.14, which most people round.", ["Pi is about 3.14,", "which most people round."]),
    ("It costs 1,000 dollars, give or take a few, in total.",
     ["It costs 1,000 dollars,", "give or take a few, in total."]),
    ("Mr. Smith met Dr. Jones at 10:30 today. They talked.", ["Mr. Smith met Dr. Jones at 10:30 today.", "They talked."]),
    ("Bring fruit, e.g. apples, and bread, i.e. food for two.", ["Bring fruit, e.g. apples,", "and bread, i.e. food for two."]),
    ("Write to john.doe@example.com and I will answer soon.", ["Write to john.doe@example.com and I will answer soon."]),
    ("See https://example.com/a.b?x=1,2 for details. Thanks!", ["See https://example.com/a.b?x=1,2 for details.", "Thanks!"]),
    ("The U.S. economy grew 2.5 percent. Prices rose.", ["The U.S. economy grew 2.5 percent.", "Prices rose."]),
    ("We had apples, pears, etc. Then we left.", ["We had apples,", "pears, etc.", "Then we left."]),
    ("Apples, pears, etc. are fruit, as you know.", ["Apples, pears, etc. are fruit,", "as you know."]),
    ("J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
    ("1. Preheat the oven. 2. Bake it.", ["1. Preheat the oven.", "2. Bake it."]),
    ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
    ("Wait... what? Really?!", ["Wait...", "what?", "Really?!"]),
    ("Version 2.0.1 shipped on 2024-05-01.", ["Version 2.0.1 shipped on 2024-05-01."]),
    ("It is .5 litres, roughly.", ["It is .5 litres,", "roughly."]),
    ("Hello, how are you today?", ["Hello, how are you today?"]),  # first clause mark too early (1 word < 3)
    ("Well, I think that it is fine; you should go ahead and try it.",
     ["Well, I think that it is fine;", "you should go ahead and try it."]),
    ("Line one\nLine two", ["Line one", "Line two"]),
    ("It was 5 p.m. Everyone left.", ["It was 5 p.m.", "Everyone left."]),
    ("Meet at 5 p.m. tomorrow, okay?", ["Meet at 5 p.m. tomorrow,", "okay?"]),
    ("Café — naïve façade, über 3.5 km.", ["Café — naïve façade,", "über 3.5 km."]),
    ("", []),
]


@pytest.mark.parametrize("pieces", ["whole", "tokens", "chars"])
@pytest.mark.parametrize("text,expected", TABLE, ids=[t[:30] for t, _ in TABLE])
def test_table(text: str, expected: list[str], pieces: str) -> None:
    assert run(text, pieces) == expected


def test_nothing_lost_and_is_a_chunker() -> None:
    text = " ".join(t for t, _ in TABLE)
    ch = ClauseChunker()
    assert isinstance(ch, Chunker)
    out = run(text, "chars")
    assert " ".join(out).split() == text.split()


def test_max_words_forces_a_cut_at_a_word_boundary() -> None:
    words = [f"w{i}" for i in range(25)]
    out = run(" ".join(words) + " end", "tokens", first_min_words=3, min_words=6, max_words=10)
    assert [len(c.split()) for c in out] == [10, 10, 6]
    assert " ".join(out).split() == words + ["end"]


def test_push_returns_clause_as_soon_as_it_is_complete() -> None:
    ch = ClauseChunker()
    assert ch.push("Sure") == []
    assert ch.push(".") == []  # could still be "Sure.com" or a decimal
    assert ch.push(" The") == ["Sure."]
    assert ch.push(" answer is 3") == []
    assert ch.push(".") == []
    assert ch.push("14") == []
    assert ch.push(" and that's it.") == []
    assert ch.flush() == ["The answer is 3.14 and that's it."]


def test_first_chunk_is_short_later_chunks_longer_and_flush_resets() -> None:
    text = "Okay then, I can help, but first tell me, what do you need, exactly?"
    assert run(text, "tokens") == [
        "Okay then, I can help,",  # "Okay then," has only 2 words < first_min_words
        "but first tell me, what do you need,",  # later chunks wait for min_words=6
        "exactly?",
    ]
    ch = ClauseChunker()
    assert ch.push("One two three four, five") == ["One two three four,"]
    assert ch.push(" six, seven") == []  # later chunks need min_words
    assert ch.flush() == ["five six, seven"]
    # After flush a new turn gets the short first chunk again.
    assert ch.push("Yes I can, surely it ") == ["Yes I can,"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ClauseChunker(first_min_words=0)
    with pytest.raises(ValueError):
        ClauseChunker(min_words=40, max_words=30)
