"""Small robust statistics shared by detectors and the verdict."""

from __future__ import annotations

import math

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def robust_z(values: np.ndarray, reference: np.ndarray | None = None, floor: float = 1e-6) -> np.ndarray:
    """(v − median) / (1.4826 · MAD), with median and MAD from ``reference`` (default: ``values``).

    NaN values stay NaN. ``floor`` keeps the scale positive when the reference is constant, scaled to
    the data so that identical values give z = 0 rather than infinities.
    """
    values = np.asarray(values, dtype=np.float64)
    ref = values if reference is None else np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.full_like(values, np.nan)
    med = float(np.median(ref))
    mad = MAD_TO_SIGMA * float(np.median(np.abs(ref - med)))
    scale = max(mad, floor * max(1.0, abs(med)))
    return (values - med) / scale


def leave_one_out_z(values: np.ndarray) -> np.ndarray:
    """Robust z of each value against the *other* values (a single outlier cannot mask itself)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for i in range(values.size):
        others = np.delete(values, i)
        out[i] = robust_z(values[i : i + 1], others)[0]
    return out


def squash(z: float, threshold: float, width: float = 1.0) -> float:
    """Map a statistic to (0, 1) with 0.5 at ``threshold``: a model score monotone in the evidence."""
    if not math.isfinite(z):
        return 1.0 if z > 0 else 0.0
    t = (z - threshold) / max(width, 1e-9)
    return float(1.0 / (1.0 + math.exp(-max(min(t, 60.0), -60.0))))
