"""NF4 with double quantization as the QLoRA paper (Dettmers et al. 2023) and
bitsandbytes define it, in numpy only, written apart from the Rust
implementation (model/src/nf4.rs) that model/tests/nf4.rs holds to it.

Usage: nf4_reference.py IN.npy OUT_DIR
  IN.npy   float32 weights, any shape
  OUT_DIR  receives codebook.npy, dynamic_map.npy, packed.npy (uint8, two codes a
           byte, the first in the high nibble), absmax.npy (fp32, one per block
           of 64), stat_codes.npy (uint8), stat_absmax.npy (fp32, one per block of
           256 constants), stat_offset.npy, absmax_dq.npy, dequantized.npy
"""

import math
import os
import sys

import numpy as np

BLOCK = 64
STAT_BLOCK = 256
# The quantile range: halfway between 1 - 1/(2*15) and 1 - 1/(2*16), so that the
# extreme quantiles stay finite (bitsandbytes' create_normal_map offset).
OFFSET = 0.9677083


def norm_ppf(p):
    """Inverse standard normal CDF by bisection on erfc (float64)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def linspace_f32(start, end, steps):
    """torch.linspace in float32, which bitsandbytes evaluated the quantiles at:
    the first half counted from start, the second from end."""
    start, end = np.float32(start), np.float32(end)
    step = (end - start) / np.float32(steps - 1)
    out = []
    for i in range(steps):
        if i < steps // 2:
            out.append(start + step * np.float32(i))
        else:
            out.append(end - step * np.float32(steps - i - 1))
    return np.array(out, dtype=np.float32)


def nf4_codebook():
    """8 positive quantiles, 7 negative ones and an exact zero, normalised to
    [-1, 1]: asymmetric so that 0 is representable."""
    positive = [norm_ppf(float(p)) for p in linspace_f32(OFFSET, 0.5, 9)[:-1]]
    negative = [-norm_ppf(float(p)) for p in linspace_f32(OFFSET, 0.5, 8)[:-1]]
    values = np.array(sorted(positive + [0.0] + negative), dtype=np.float32)
    return values / values.max()


def dynamic_map():
    """bitsandbytes' signed 8-bit dynamic map: for exponents 1e-6 … 1e0, 2**i
    fraction midpoints of linspace(0.1, 1), both signs, plus 0 and 1."""
    scales = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0]
    data = []
    for i, scale in enumerate(scales):
        n = 2**i + 1
        step = (1.0 - 0.1) / (n - 1)
        bounds = [0.1 + j * step for j in range(n - 1)] + [1.0]
        for j in range(n - 1):
            mean = (bounds[j] + bounds[j + 1]) / 2
            data.append(scale * mean)
            data.append(-scale * mean)
    data += [0.0, 1.0]
    assert len(data) == 256
    return np.array(sorted(data), dtype=np.float64).astype(np.float32)


def nearest(values, code):
    """Index of the nearest code: how many midpoints (fp32) lie strictly below."""
    mids = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    return np.searchsorted(mids, values, side="left").astype(np.uint8)


def blocks(flat, size):
    pad = (-len(flat)) % size
    return np.concatenate([flat, np.zeros(pad, dtype=np.float32)]).reshape(-1, size)


def safe(absmax):
    return np.where(absmax > 0, absmax, np.float32(1)).astype(np.float32)


def main():
    weights = np.load(sys.argv[1]).astype(np.float32)
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    code = nf4_codebook()
    dmap = dynamic_map()
    numel = weights.size

    w = blocks(weights.reshape(-1), BLOCK)
    absmax = np.abs(w).max(axis=1).astype(np.float32)
    codes = nearest((w / safe(absmax)[:, None]).astype(np.float32), code).reshape(-1)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)

    # Double quantization: the mean out, then 8-bit blocks of 256 constants.
    offset = np.float32(absmax.astype(np.float64).mean())
    centred = (absmax - offset).astype(np.float32)
    s = blocks(centred, STAT_BLOCK)
    stat_absmax = np.abs(s).max(axis=1).astype(np.float32)
    stat_codes = nearest((s / safe(stat_absmax)[:, None]).astype(np.float32), dmap)
    absmax_dq = (dmap[stat_codes] * stat_absmax[:, None]).reshape(-1)[: len(absmax)]
    absmax_dq = (absmax_dq + offset).astype(np.float32)

    values = code[codes].reshape(-1, BLOCK) * absmax_dq[:, None]
    dequantized = values.astype(np.float32).reshape(-1)[:numel].reshape(weights.shape)

    for name, value in [
        ("codebook", code),
        ("dynamic_map", dmap),
        ("packed", packed),
        ("absmax", absmax),
        ("stat_codes", stat_codes.reshape(-1)[: len(absmax)]),
        ("stat_absmax", stat_absmax),
        ("stat_offset", np.array([offset], dtype=np.float32)),
        ("absmax_dq", absmax_dq),
        ("dequantized", dequantized),
    ]:
        np.save(os.path.join(out, name + ".npy"), value)


if __name__ == "__main__":
    main()
