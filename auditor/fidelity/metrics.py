"""Numbers that say how faithful a map is: localisation L_k, box share, Spearman, SSIM.

All maps here are channel-summed 2-D attributions (N, H, W) at input resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

Box = tuple[int, int, int, int]  # (top, left, bottom, right)


def positive_mass_in(maps: torch.Tensor, boxes: list[Box] | Box) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mass inside each map's box, total positive mass), both (N,)."""
    pos = maps.clamp(min=0)
    total = pos.flatten(1).sum(1)
    if isinstance(boxes, tuple):
        boxes = [boxes] * len(maps)
    inside = torch.stack([pos[i, t:b, l:r].sum() for i, (t, l, b, r) in enumerate(boxes)]) if len(maps) else total
    return inside, total


def localisation(maps: torch.Tensor, boxes: list[Box] | Box) -> tuple[np.ndarray, np.ndarray]:
    """L = positive mass inside the box / all positive mass (0 when there is none), and the inside mass.

    This is Rao et al.'s grid localisation metric L_k (box = cell k); with the trigger box it is the
    planted-trigger *box share*.
    """
    inside, total = positive_mass_in(maps, boxes)
    score = torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total))
    return score.double().cpu().numpy(), inside.double().cpu().numpy()


def gaussian_smooth(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian blur with kernel size K and σ = K/4 (the paper's smoothing), zero padding."""
    if kernel <= 1:
        return maps
    sigma = kernel / 4.0
    ax = torch.arange(kernel, dtype=maps.dtype, device=maps.device) - (kernel - 1) / 2.0
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    x = maps[:, None]
    x = F.conv2d(x, g.view(1, 1, 1, -1), padding=(0, kernel // 2))
    x = F.conv2d(x, g.view(1, 1, -1, 1), padding=(kernel // 2, 0))
    return x[:, 0, : maps.shape[1], : maps.shape[2]]


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row (average ranks for ties); 0 where a row is constant."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(1) / den
    return np.where(den > 0, rho, 0.0)


def normalise_abs(maps: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """|map| / its own 99.5th percentile, clipped to [0, 1] (per row)."""
    m = np.abs(np.asarray(maps, dtype=np.float64))
    flat = m.reshape(len(m), -1)
    scale = np.percentile(flat, percentile, axis=1)
    scale = np.where(scale > 0, scale, np.maximum(flat.max(1), 1e-30))
    return np.clip(m / scale.reshape(-1, *([1] * (m.ndim - 1))), 0.0, 1.0)


def ssim_rows(a: np.ndarray, b: np.ndarray, window: int = 7) -> np.ndarray:
    """Mean SSIM per pair of (N, H, W) maps in [0, 1] (uniform window, Wang et al. constants)."""
    x = torch.as_tensor(np.asarray(a, dtype=np.float64))[:, None]
    y = torch.as_tensor(np.asarray(b, dtype=np.float64))[:, None]
    window = max(1, min(window, x.shape[2], x.shape[3]))
    pool = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    c1, c2 = 0.01**2, 0.03**2
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx**2, pool(y * y) - my**2, pool(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).numpy()


def finite_mean(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def finite_median(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan
