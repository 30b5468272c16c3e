"""Tiny random-weight CSM (transformers) and Mimi (moshi) built offline, so CPU tests run in seconds.

Same architectures as CSM-1B and Mimi (32 codebooks, 2051-token audio vocab, 1920-sample frames at 24 kHz), with
small widths and depths.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("moshi")

TINY_MIMI = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1, "dimension": 32, "causal": True, "n_filters": 4, "n_residual_layers": 1, "activation": "ELU",
        "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0, "kernel_size": 7,
        "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none", "pad_mode": "constant",
        "ratios": [8, 6, 5, 4], "true_skip": True,
    },
    "quantizer": {"dimension": 16, "n_q": 32, "bins": 2048, "input_dimension": 32, "output_dimension": 32},
    "transformer": {
        "d_model": 32, "num_heads": 2, "num_layers": 1, "causal": True, "layer_scale": 0.01, "context": 250,
        "conv_layout": True, "max_period": 10000, "gating": "none", "norm": "layer_norm",
        "positional_embedding": "rope", "dim_feedforward": 64, "input_dimension": 32, "output_dimensions": [32],
    },
}


def tiny_csm_config(max_positions: int = 2048):
    from transformers import CsmConfig, MimiConfig

    codec = MimiConfig(
        hidden_size=32, num_filters=4, codebook_dim=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, head_dim=16, num_semantic_quantizers=1, num_quantizers=32,
        upsample_groups=32,
    )
    return CsmConfig(
        num_codebooks=32, vocab_size=2051, text_vocab_size=300, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        pad_token_id=0, bos_token_id=1, audio_token_id=298, audio_eos_token_id=299, codebook_pad_token_id=2050,
        depth_decoder_config=dict(
            num_codebooks=32, backbone_hidden_size=64, vocab_size=2051, hidden_size=48, intermediate_size=96,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=33,
        ),
        codec_config=codec.to_dict(),
    )


def make_tiny_csm(seed: int = 0, max_positions: int = 2048):
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(seed)
    return CsmForConditionalGeneration(tiny_csm_config(max_positions)).eval()


def make_tiny_mimi(seed: int = 0):
    from fern.tts.csm.loading import build_mimi

    torch.manual_seed(seed)
    return build_mimi("cpu", TINY_MIMI)


def make_synth(model=None, mimi=None, **kwargs):
    from fern.tts.csm.synthesizer import CsmSynthesizer
    from fern.tts.csm.tokenizer import ByteTokenizer

    opts = dict(temperature=0.0, warmup=False, max_audio_s=0.8, device="cpu")
    opts.update(kwargs)
    model = model if model is not None else make_tiny_csm()
    mimi = mimi if mimi is not None else make_tiny_mimi()
    return CsmSynthesizer(_modules=(model, ByteTokenizer(), mimi), **opts)


@pytest.fixture(scope="module")
def tiny_csm():
    return make_tiny_csm()


@pytest.fixture
def tiny_mimi():
    return make_tiny_mimi()
