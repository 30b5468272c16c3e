"""Random-weight causal LMs and a file-free tokenizer, for benchmarks and tests (no download, any transformers).

Timing does not depend on the weights, so a model built from a config measures what the real one would cost. The
tokenizer is word-level with a Llama-3-style chat template; it is built in code so it works wherever ``tokenizers``
does (transformers 4.57 and 5.x alike).
"""

from __future__ import annotations

from typing import Any

SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "[UNK]"]
CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|> "
    "{{ m['content'] }} <|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|> {% endif %}"
)

# Sizes: Llama-3.2-1B (the GPU target), and tiny ones for CPU tests.
SIZES: dict[str, dict[str, Any]] = {
    "llama1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                    rope_theta=500000.0, tie_word_embeddings=True),
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False, initializer_range=0.5),
}


def word_tokenizer(n_words: int = 3000, extra_words: tuple[str, ...] = ()):
    """A word-level fast tokenizer: a few thousand words, whitespace/punctuation pre-tokenizer, chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: list[str] = []
    seen = set(SPECIALS)
    base = ["system", "user", "assistant", ".", ",", "?", "!", "'"] + list(extra_words)
    for w in base + [f"w{i}" for i in range(n_words)]:
        if w not in seen:
            seen.add(w)
            words.append(w)
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>")
    # Mark the chat markers special (matched whole, skipped when decoding). add_tokens(special_tokens=True) exists in
    # transformers 4.x and 5.x alike ("additional_special_tokens" was renamed in 5.x).
    fast.add_tokens(SPECIALS[:4], special_tokens=True)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def random_llama(size: str = "tiny", *, dtype: str = "float32", device: str = "cpu", seed: int = 0,
                 attn_implementation: str = "sdpa", **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg_kw = dict(SIZES[size])
    cfg_kw.update(overrides)
    cfg = LlamaConfig(**cfg_kw)
    cfg.eos_token_id = 3  # <|eot_id|> in word_tokenizer()
    cfg.bos_token_id = 0
    try:
        cfg._attn_implementation = attn_implementation
    except Exception:  # noqa: BLE001
        pass
    torch.manual_seed(seed)
    tdtype = getattr(torch, dtype)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(tdtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    if hasattr(model, "generation_config") and model.generation_config is not None:
        model.generation_config.eos_token_id = 3
    return model.eval()


def random_hf_lm(size: str = "tiny", *, device: str = "cpu", dtype: str = "float32", tokenizer=None, **kw):
    """HFCausalLM over a random-weight Llama of ``size`` (see SIZES)."""
    from fern.llm.hf import HFCausalLM

    tok = tokenizer or word_tokenizer()
    attn = kw.pop("attn_implementation", "sdpa")
    model = random_llama(size, dtype=dtype, device=device, attn_implementation=attn)
    return HFCausalLM(model=f"random-{size}", device=device, dtype=dtype, _model=model, _tokenizer=tok, **kw)
