"""HFCausalLM on the real offline SmolLM2-135M GGUF (CPU)."""

from __future__ import annotations

import pytest

from fern.errors import MissingWeightsError
from fern.events import CancelToken
from fern.llm.hf import HFCausalLM, IncrementalDecoder
from fern.protocols import LanguageModel
from fern.streams import drain

pytestmark = pytest.mark.models  # real models: the full tier (pytest -m 'not models' skips them)

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}


def ask(q: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": q}]


def test_answers_and_reports(smollm2: HFCausalLM) -> None:
    assert isinstance(smollm2, LanguageModel)
    pieces, info = drain(smollm2.stream(ask("What is the capital of France?"), CancelToken()))
    text = "".join(pieces)
    assert "Paris" in text
    assert len(pieces) > 1  # streamed, not one blob
    assert info.backend.startswith("hf:") and info.fallback is False and info.error is None
    assert 1 <= info.n_tokens <= 48 and info.prompt_tokens > 10
    assert "<|im_end|>" not in text and "<|im_start|>" not in text


def test_prefix_cache_reuse_gives_the_same_tokens_as_a_cold_prompt(smollm2: HFCausalLM, monkeypatch) -> None:
    monkeypatch.setattr(smollm2, "max_new_tokens", 16)
    msgs = ask("Name a fruit.")
    first = "".join(smollm2.stream(msgs, CancelToken()))
    msgs2 = msgs + [{"role": "assistant", "content": first}, {"role": "user", "content": "And a vegetable?"}]
    warm, info = drain(smollm2.stream(msgs2, CancelToken()))
    assert info.reused_tokens > 0.5 * info.prompt_tokens
    smollm2.reset_cache()
    cold, cold_info = drain(smollm2.stream(msgs2, CancelToken()))
    assert cold_info.reused_tokens == 0
    assert "".join(warm) == "".join(cold)
    # A different system prompt shares only the template's first tokens.
    other = [{"role": "system", "content": "Talk like a pirate."}, {"role": "user", "content": "Hi"}]
    assert drain(smollm2.stream(other, CancelToken()))[1].reused_tokens < 5


def test_cancel_stops_at_the_next_token(smollm2: HFCausalLM) -> None:
    cancel = CancelToken()
    stream = smollm2.stream(ask("Tell me a long story about a dragon."), cancel)
    got = [next(stream)]
    cancel.cancel()
    rest, info = drain(stream)
    assert rest == [] and len(got) == 1
    assert info.n_tokens == 1 and info.cancelled
    # The cache stays usable after a cancelled stream.
    assert "Paris" in "".join(smollm2.stream(ask("What is the capital of France?"), CancelToken()))


def test_incremental_decode_multibyte_and_spaces(smollm2: HFCausalLM) -> None:
    tok = smollm2.tokenizer
    text = "Café naïve — 日本語 😀 costs €3.50, ok?  Two  spaces."
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_count_tokens(smollm2: HFCausalLM) -> None:
    assert smollm2.count_tokens("") == 0
    assert smollm2.count_tokens("hello world") == 2
    assert smollm2.count_tokens("hello world " * 10) > 10


def test_missing_gguf_says_run_setup(tmp_path) -> None:
    with pytest.raises(MissingWeightsError, match="scripts/setup.sh"):
        HFCausalLM(model=str(tmp_path), gguf_file="nope.gguf", device="cpu")


def test_the_converted_copy_loads_what_the_gguf_file_itself_gives(smollm2: HFCausalLM) -> None:
    """Loads go through a transformers copy of the GGUF file (made once beside it; ~100x faster to load). The copy
    must be the file: the same tensors, the same tokenizer, the same answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fern.llm.hf import _converted_gguf
    from fern.paths import models_dir

    gguf = models_dir() / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    copy = _converted_gguf(gguf)
    assert copy is not None and copy.parent == gguf.parent / ".converted" and (copy / "model.safetensors").is_file()
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left behind
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                  attn_implementation="eager")  # as the fixture's
    direct_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # what save_pretrained records about the saving (where, by which version, the class) is not the model, nor is
    # transformers 5's mark on a model loaded from GGUF (quantization_config: GGUF; the copy is dense, see
    # _forget_gguf_quantizer)
    saving = {"_name_or_path", "transformers_version", "architectures", "quantization_config"}
    assert ({k: v for k, v in smollm2.model.config.to_dict().items() if k not in saving}
            == {k: v for k, v in direct.config.to_dict().items() if k not in saving})
    gen = [{k: v for k, v in m.generation_config.to_dict().items() if k not in saving} for m in (smollm2.model, direct)]
    assert gen[0] == gen[1]  # the stop tokens come from it
    ours = smollm2.model.state_dict()
    theirs = direct.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    tok = smollm2.tokenizer
    prompt = tok.apply_chat_template(ask("Where is Zürich? 🙂"), tokenize=False, add_generation_prompt=True)
    assert prompt == direct_tok.apply_chat_template(ask("Where is Zürich? 🙂"), tokenize=False,
                                                    add_generation_prompt=True)
    assert tok(prompt).input_ids == direct_tok(prompt).input_ids
    assert (len(tok), tok.eos_token, tok.all_special_tokens) == (len(direct_tok), direct_tok.eos_token,
                                                                 direct_tok.all_special_tokens)
    ids = torch.tensor([tok(prompt).input_ids])
    with torch.no_grad():
        assert torch.equal(smollm2.model(ids).logits, direct(ids).logits)


def test_a_truncated_gguf_is_one_clear_error_and_leaves_no_copy(tmp_path) -> None:
    from fern.paths import models_dir

    real = models_dir() / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(real, "rb") as src:
        (tmp_path / "cut.gguf").write_bytes(src.read(5000))
    with pytest.raises(MissingWeightsError, match=r"cut\.gguf could not be read .*truncated"):
        HFCausalLM(model=str(tmp_path), gguf_file="cut.gguf", device="cpu")
    assert [p.name for p in tmp_path.iterdir()] == ["cut.gguf"] or not any((tmp_path / ".converted").iterdir())


def test_missing_hub_repo_names_repo_and_download(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError) as e:
        HFCausalLM(model="fern-test/no-such-model", device="cpu")
    assert "fern-test/no-such-model" in str(e.value) and "hf download" in str(e.value)
