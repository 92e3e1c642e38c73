"""AggAtt (Rao et al.): what a method's maps look like from its best to its worst localisation.

Maps are sorted by their score L (ties broken by the positive mass inside the box), split into the
percentile bins 0–2, 2–5, 5–50, 50–95, 95–98, 98–100 %, and averaged per bin; all bin means of one
method share a single normalisation (their 99.5th percentile of |value|), so the bins are comparable.
Each bin also keeps its median example. With few maps a narrow bin holds a single map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditor.fidelity.metrics import Box

BINS: tuple[tuple[float, float], ...] = ((0, 2), (2, 5), (5, 50), (50, 95), (95, 98), (98, 100))


@dataclass(frozen=True, eq=False)
class AggAttBin:
    """One percentile bin. ``mean_map``/``median_map`` are (H, W) in [-1, 1] (shared normalisation
    for the means, own normalisation for the median example); ``box_share`` is the positive mass of the
    mean map inside the reference box (the target cell or the trigger box)."""

    lo: float
    hi: float
    count: int
    mean_score: float
    mean_map: np.ndarray
    median_map: np.ndarray
    box_share: float

    @property
    def label(self) -> str:
        return f"{self.lo:g}–{self.hi:g} %"


def _scale(maps: np.ndarray, percentile: float = 99.5) -> float:
    s = float(np.percentile(np.abs(maps), percentile)) if maps.size else 0.0
    return s if s > 0 else max(float(np.abs(maps).max()) if maps.size else 0.0, 1e-30)


def _share(m: np.ndarray, box: Box) -> float:
    pos = np.clip(m, 0, None)
    total = float(pos.sum())
    t, l, b, r = box
    return float(pos[t:b, l:r].sum()) / total if total > 0 else 0.0


def aggatt(maps: np.ndarray, scores: np.ndarray, inside: np.ndarray, box: Box) -> tuple[AggAttBin, ...]:
    """Bins over (N, H, W) maps sorted by ``scores`` (then ``inside``); ``box`` is where mass should be."""
    n = len(maps)
    if n == 0:
        return ()
    order = np.lexsort((inside, scores))  # ascending: worst localisation first
    means, medians, rows = [], [], []
    for lo, hi in BINS:
        start = min(int(np.floor(lo / 100 * n)), n - 1)
        end = max(start + 1, int(np.floor(hi / 100 * n + 1e-9)))
        idx = order[start:end]
        means.append(maps[idx].mean(0))
        medians.append(maps[idx[len(idx) // 2]])
        rows.append((lo, hi, len(idx), float(scores[idx].mean())))
    shared = _scale(np.stack(means))
    bins = []
    for (lo, hi, count, mean_score), mean, median in zip(rows, means, medians):
        bins.append(AggAttBin(lo, hi, count, mean_score, np.clip(mean / shared, -1, 1),
                              np.clip(median / _scale(median), -1, 1), _share(mean, box)))
    return tuple(bins)


def signed_picture(m: np.ndarray) -> np.ndarray:
    """(H, W) in [-1, 1] → RGB in [0, 1]: white at 0, red positive, blue negative."""
    v = np.clip(np.asarray(m, dtype=np.float64), -1, 1)
    pos, neg = np.clip(v, 0, None), np.clip(-v, 0, None)
    return np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1).clip(0, 1)
