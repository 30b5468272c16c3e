"""Forced alignment (pocketsphinx, offline) of real speech: the turn-taking set cuts between words where the
aligner says, and a cut there holds none of the next word, where one at Whisper's own word timestamp did."""

from __future__ import annotations

import re

import pytest

from fern.bench.turn_data import MID_SENTENCE_CUTS

from .conftest import cut_index, with_silence

pytestmark = pytest.mark.models

SAID = "Please enter your conference number followed by the pound key."


@pytest.fixture(scope="module")
def aligner():
    from fern.bench.align import WordAligner

    return WordAligner()


def words_of(text: str) -> list[str]:
    return [re.sub(r"[^a-z']", "", w.lower()) for w in text.split() if re.sub(r"[^a-z']", "", w.lower())]


@pytest.mark.parametrize("word, tokens", [
    ("Press", ["press"]), ("1", ["one"]), ("10th", ["tenth"]), ("re-enter", ["reenter"]),
    ("unmute", ["un", "mute"]), ("PBX", ["p", "b", "x"]), ("...", []), ("Digium", None)])
def test_recogniser_words_are_spelt_as_dictionary_tokens(aligner, word, tokens):
    assert aligner.spell(word) == tokens


def test_words_are_placed_in_order_and_the_boundary_matches_the_table(aligner, prompt):
    audio = prompt("conf-getconfno")
    aligned = aligner.align(audio, SAID.split())
    assert [w.word for w in aligned] == SAID.split()
    assert all(a.start <= a.end <= b.start for a, b in zip(aligned, aligned[1:]))
    assert aligned[-1].end <= audio.size / 16000 + 0.01
    the, pound = aligned[7], aligned[8]
    assert (the.end, pound.start) == pytest.approx(MID_SENTENCE_CUTS["conf-getconfno"], abs=0.02)


def test_a_word_it_cannot_spell_leaves_the_prompt_out(aligner, prompt):
    assert aligner.align(prompt("conf-getconfno"), ["Please", "Digium", "pound", "key."]) is None


def test_a_cut_at_the_aligned_boundary_holds_none_of_the_next_word(tiny_en, prompt):
    """Whisper's own timestamp for this boundary (2.62 s) is 190 ms into "pound": the fragment up to it is read with
    an invented last word ("... followed by the panel."), which made a mid-sentence pause look like an ending."""
    audio = prompt("conf-getconfno")
    at_aligned = tiny_en.transcribe(with_silence(0.3, audio[:cut_index(audio, "conf-getconfno")], 0.5))
    at_whisper = tiny_en.transcribe(with_silence(0.3, audio[:int(2.62 * 16000)], 0.5))
    said, aligned, whisper = words_of(SAID), words_of(at_aligned), words_of(at_whisper)
    # up to "the" at most (Whisper may drop a weak last word of a fragment), and nothing of the next word
    assert 0 < len(aligned) <= 8 and aligned == said[:len(aligned)], at_aligned
    assert len(whisper) == 9 and whisper[:8] == said[:8] and whisper[8] != "pound", at_whisper
