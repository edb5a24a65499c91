"""The arithmetic of PW004's fix, shared by every fix backend.

A BatchNorm in inference computes ``(x - mean) / sqrt(var + eps) * scale + shift``. For
``x = conv(z) + bias`` that is ``(conv(z) - (mean - bias)) / ...``: dropping the conv's
bias and storing ``mean' = mean - bias`` as the running mean leaves every output as it
was. An InstanceNorm subtracts its input's own per-channel mean, which a per-channel
bias shifts by exactly the bias, so the bias is dropped with nothing to fold.
"""

from __future__ import annotations

import numpy as np

from pwlint.errors import FixNotApplicable


def folded_mean(mean: np.ndarray, bias: np.ndarray, conv: str, norm: str) -> np.ndarray:
    """``mean - bias``, the running mean that takes the conv's bias in, computed in
    float64 and returned in the mean's dtype and shape."""
    mean, bias = np.asarray(mean), np.asarray(bias)
    if mean.size != bias.size:
        raise FixNotApplicable(
            f"the bias of '{conv}' ({bias.size} values) does not match the running mean of '{norm}' "
            f"({mean.size} values)"
        )
    folded = mean.astype(np.float64) - bias.astype(np.float64).reshape(mean.shape)
    return folded.astype(mean.dtype)
