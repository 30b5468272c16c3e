"""The streaming resampler used by io=live: block by block it equals one pass, and one pass equals scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from fern.io.resample import StreamResampler


@pytest.mark.parametrize("rate_in,rate_out,block", [(44100, 16000, 441), (48000, 16000, 480), (24000, 48000, 240),
                                                    (22050, 44100, 333), (16000, 16000, 320)])
def test_blocks_equal_one_pass_equal_resample_poly(rate_in, rate_out, block):
    x = np.random.default_rng(0).standard_normal(rate_in // 2).astype(np.float32)
    r = StreamResampler(rate_in, rate_out)
    streamed = np.concatenate([r.process(x[i:i + block]) for i in range(0, x.size, block)])
    whole = StreamResampler(rate_in, rate_out).process(x)
    assert streamed.size == whole.size == int(np.ceil(x.size * rate_out / rate_in))
    np.testing.assert_array_equal(streamed, whole)  # no seams at block edges
    lag = round(r.delay_s * rate_out)
    if lag == r.delay_s * rate_out:  # scipy's output is centred: ours lags by the filter's half length
        ref = resample_poly(x, r.up, r.down)
        n = ref.size - lag
        np.testing.assert_allclose(streamed[lag:lag + n][50:-50], ref[:n][50:-50], atol=1e-5)
    assert r.delay_s < 0.001
