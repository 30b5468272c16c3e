"""Tiny random-weight CSM (transformers) and Mimi (moshi) for tests and the CPU benchmark; no download.

Same architectures as CSM-1B and Mimi (32 codebooks, 2051-token audio vocab, 1920-sample frames at 24 kHz), with small
widths and depths. The audio they make is noise.
"""

from __future__ import annotations

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


def make_tiny_csm(seed: int = 0, max_positions: int = 2048, device: str = "cpu"):
    import torch
    from transformers import CsmForConditionalGeneration

    torch.manual_seed(seed)
    return CsmForConditionalGeneration(tiny_csm_config(max_positions)).to(device).eval()


def make_tiny_mimi(seed: int = 0, device: str = "cpu"):
    import torch

    from fern.tts.csm.loading import build_mimi

    torch.manual_seed(seed)
    return build_mimi(device, TINY_MIMI)
