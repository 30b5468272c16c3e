"""Decode paths of HFCausalLM on a tiny random-weight Llama (CPU): dynamic cache, static cache, compiled decode."""

from __future__ import annotations

import pytest

from fern.events import CancelToken
from fern.llm.testing import random_hf_lm, word_tokenizer
from fern.streams import drain

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)

TOK = word_tokenizer()
T1 = [{"role": "system", "content": "w1 w2 w3 ."}, {"role": "user", "content": "w5 w6 , w7 ?"}]


def turns(lm, convs):
    out = []
    for msgs in convs:
        _, info = drain(lm.stream(msgs, CancelToken()))
        out.append((list(lm.last_token_ids), info.reused_tokens))
    return out


def conversation():
    """Turn 2 extends turn 1; turn 3 drops the first exchange (a history trim): the cached prefix shrinks."""
    t2 = T1 + [{"role": "assistant", "content": "w8 w9 ."}, {"role": "user", "content": "w10 w11 w12"}]
    t3 = [T1[0], {"role": "user", "content": "w10 w11 w12"}]
    t4 = t3 + [{"role": "assistant", "content": "w13"}, {"role": "user", "content": "w14 w15 w16 w17 w18 w19"}]
    return [T1, t2, t3, t4, T1]


def cold(convs, **kw):
    """Each prompt from an empty cache: the reference."""
    out = []
    for msgs in convs:
        lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=12, ignore_eos=True, **kw)
        out.append(turns(lm, [msgs])[0][0])
    return out


def test_prefix_reuse_matches_cold_prompts_dynamic_cache() -> None:
    ref = cold(conversation())
    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=12, ignore_eos=True)
    got = turns(lm, conversation())
    assert [ids for ids, _ in got] == ref
    reused = [r for _, r in got]
    assert reused[0] == 0 and reused[1] > 15 and 0 < reused[2] < reused[1] and reused[3] > reused[2]
    assert all(len(ids) == 12 for ids in ref) and len(set(ref[0])) > 3  # a non-degenerate random model


def test_static_cache_matches_dynamic_including_a_shrinking_prefix() -> None:
    ref = cold(conversation())
    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=12, ignore_eos=True, static_cache=True, max_cache_len=128)
    got = turns(lm, conversation())
    assert [ids for ids, _ in got] == ref
    assert got[1][1] > 15


def test_static_cache_too_small_is_a_clear_error() -> None:
    from fern.errors import ConfigValueError

    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=12, static_cache=True, max_cache_len=16)
    with pytest.raises(ConfigValueError, match="static cache"):
        list(lm.stream(T1, CancelToken()))


def test_sampling_params() -> None:
    greedy = cold([T1])[0]
    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=12, ignore_eos=True, temperature=1.0, top_k=1)
    assert turns(lm, [T1])[0][0] == greedy  # top_k=1 is greedy whatever the temperature
    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=12, ignore_eos=True, temperature=1.5, top_p=0.9)
    ids = turns(lm, [T1])[0][0]
    assert len(ids) == 12 and all(0 <= i < len(TOK) for i in ids)


def test_max_new_tokens_and_eos() -> None:
    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=5, ignore_eos=True)
    assert len(turns(lm, [T1])[0][0]) == 5
    lm._eos_ids = {cold([T1])[0][2]}  # make the third greedy token the end of turn
    lm.ignore_eos = False
    assert len(turns(lm, [T1])[0][0]) == 2


@pytest.mark.slow
def test_compiled_static_decode_gives_the_same_greedy_tokens_without_recompiling() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    ref = cold(conversation())
    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=12, ignore_eos=True, static_cache=True, compile=True,
                      max_cache_len=128)
    counters.clear()
    got = turns(lm, conversation())
    assert [ids for ids, _ in got] == ref
    assert counters["stats"]["unique_graphs"] == 1  # one decode graph for every turn and position


def test_inference_mode_does_not_leak_to_the_consumer_and_compile_implies_static() -> None:
    import torch

    lm = random_hf_lm("tiny", tokenizer=TOK, max_new_tokens=4, ignore_eos=True)
    for _ in lm.stream(T1, CancelToken()):
        assert not torch.is_inference_mode_enabled()
    assert random_hf_lm("tiny", tokenizer=TOK, compile=True).static_cache is True
