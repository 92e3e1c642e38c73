"""Unrestricted input distributions for data-free probing of image classifiers.

Data-free detectors need inputs that are not the training set. One distribution is not enough: a
trojaned model often sends *all* uniform noise to its target class (a "noise sink") while a clean
model sends it to some arbitrary class, so every sampler below has a different character — pixel
noise, smooth blobs, oriented gratings and flat shapes — and :func:`unrestricted_samples` mixes them
in fixed proportions. Everything is canonical (B, C, H, W) in [0, 1] and drawn from a caller-owned
``torch.Generator`` (no global RNG).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: The kinds :func:`unrestricted_samples` knows, in the order their blocks appear in the output.
SAMPLER_KINDS: tuple[str, ...] = ("uniform", "gaussian", "blobs", "gratings", "shapes")


def uniform_noise(n: int, shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """i.i.d. U(0, 1) pixels."""
    return torch.rand((n, *shape), generator=g)


def gaussian_noise(n: int, shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """i.i.d. N(μ, σ) pixels with a random mean and spread per image, clipped to [0, 1]."""
    mean = 0.2 + 0.6 * torch.rand((n, 1, 1, 1), generator=g)
    std = 0.05 + 0.25 * torch.rand((n, 1, 1, 1), generator=g)
    return (mean + std * torch.randn((n, *shape), generator=g)).clamp(0, 1)


def blob_noise(n: int, shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """Low-frequency noise: a coarse random grid (2–8 cells a side) upsampled bicubically, contrast-stretched."""
    c, h, w = shape
    out = torch.empty((n, c, h, w))
    cells = torch.randint(2, 9, (n,), generator=g)
    for size in cells.unique().tolist():  # one interpolate per grid size, not per image
        idx = torch.nonzero(cells == size).squeeze(1)
        coarse = torch.rand((len(idx), c, size, size), generator=g)
        out[idx] = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    return (out - lo) / (hi - lo).clamp_min(1e-6)


def gratings(n: int, shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """Oriented sinusoidal gratings and checkerboards with random frequency, phase and colours."""
    c, h, w = shape
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    angle = math.pi * torch.rand((n, 1, 1), generator=g)
    freq = 1.0 + 9.0 * torch.rand((n, 1, 1), generator=g)
    phase = 2 * math.pi * torch.rand((n, 1, 1), generator=g)
    u = torch.cos(angle) * xs + torch.sin(angle) * ys
    v = -torch.sin(angle) * xs + torch.cos(angle) * ys
    wave = torch.sin(2 * math.pi * freq * u + phase)
    checker = torch.sign(wave) * torch.sign(torch.sin(2 * math.pi * freq * v + phase))
    use_checker = (torch.rand((n, 1, 1), generator=g) < 0.3).float()
    t = 0.5 + 0.5 * (use_checker * checker + (1 - use_checker) * wave)  # (n,h,w) in [0,1]
    a = torch.rand((n, c, 1, 1), generator=g)
    b = torch.rand((n, c, 1, 1), generator=g)
    return (a + (b - a) * t[:, None]).clamp(0, 1)


def flat_shapes(n: int, shape: Sequence[int], g: torch.Generator, per_image: int = 3) -> torch.Tensor:
    """Flat-coloured background with a few random disks and rectangles of random colour and size."""
    c, h, w = shape
    out = torch.rand((n, c, 1, 1), generator=g).expand(n, c, h, w).clone()
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    for _ in range(per_image):
        cy = h * torch.rand((n, 1, 1), generator=g)
        cx = w * torch.rand((n, 1, 1), generator=g)
        ry = (0.08 + 0.3 * torch.rand((n, 1, 1), generator=g)) * h
        rx = (0.08 + 0.3 * torch.rand((n, 1, 1), generator=g)) * w
        disk = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
        rect = ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
        is_disk = torch.rand((n, 1, 1), generator=g) < 0.5
        inside = torch.where(is_disk, disk, rect)[:, None].float()
        colour = torch.rand((n, c, 1, 1), generator=g)
        out = out * (1 - inside) + colour * inside
    return out


_SAMPLERS = {
    "uniform": uniform_noise,
    "gaussian": gaussian_noise,
    "blobs": blob_noise,
    "gratings": gratings,
    "shapes": flat_shapes,
}


def unrestricted_samples(
    n: int,
    shape: Sequence[int],
    generator: torch.Generator,
    kinds: Sequence[str] = SAMPLER_KINDS,
    data: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images mixing the ``kinds`` in equal blocks (plus ``data`` rows as one more block).

    Returns ``(x, kind_index)``: ``x`` (n, C, H, W) in [0, 1] and the block index of every row
    (``len(kinds)`` marks rows drawn from ``data``). Deterministic given the generator state.
    """
    unknown = [k for k in kinds if k not in _SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler kind(s) {unknown}; choose from {', '.join(SAMPLER_KINDS)}")
    blocks = len(kinds) + (1 if data is not None and len(data) > 0 else 0)
    if blocks == 0:
        raise ValueError("no sampler kinds and no data")
    sizes = [n // blocks + (1 if i < n % blocks else 0) for i in range(blocks)]
    parts, tags = [], []
    for i, kind in enumerate(kinds):
        parts.append(_SAMPLERS[kind](sizes[i], tuple(shape), generator))
        tags.append(torch.full((sizes[i],), i, dtype=torch.long))
    if blocks > len(kinds):
        pick = torch.randint(0, len(data), (sizes[-1],), generator=generator)
        parts.append(data[pick].to(torch.float32).clamp(0, 1))
        tags.append(torch.full((sizes[-1],), len(kinds), dtype=torch.long))
    return torch.cat(parts), torch.cat(tags)
