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
