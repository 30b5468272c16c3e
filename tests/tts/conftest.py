"""Tiny random-weight CSM (transformers) and Mimi (moshi) built offline, so CPU tests run in seconds.

Same architectures as CSM-1B and Mimi (32 codebooks, 2051-token audio vocab, 1920-sample frames at 24 kHz), with
small widths and depths.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    # the Triton kernel tests (test_csm_kernels.py) run in Triton's interpreter here; Triton fixes that mode when it
    # is first imported (transformers imports it), so it is set before
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("transformers")
pytest.importorskip("moshi")

from fern.tts.csm.tiny import TINY_MIMI, make_tiny_csm, make_tiny_mimi, tiny_csm_config  # noqa: E402,F401


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


def torch_backbone_step(engine):
    """The torch fast path's backbone step at the engine's next row, with the cache put back as it was, for the
    Triton step to redo: (input row, position tensor, hidden state (1, D), each layer's K/V at the row, each
    layer's cache before)."""
    import torch

    with torch.no_grad():
        before = [kv.clone() for kv in engine.bb.kv]
        emb, at = engine.emb_in.clone(), engine.pos.clone()
        ref = engine.bb.forward(emb, at)[:, -1].clone()
        ref_kv = [kv[:, :, :, int(at)].clone() for kv in engine.bb.kv]
        for kv, saved in zip(engine.bb.kv, before):
            kv.copy_(saved)
    return emb, at, ref, ref_kv, before
