"""Procedural 3×32×32 shape images: 10 shape classes, random colour, size, position and rotation, on a
textured background. Generated from a seed, vectorised (thousands of images per second on a CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SHAPE_CLASSES: tuple[str, ...] = (
    "disk", "ring", "triangle", "square", "star", "plus", "ellipse", "half_disk", "hollow_square", "l_shape",
)


def _membership(label: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-mask of each shape in its own unit frame (u, v in shape radii); (B,H,W) bool."""
    r = torch.sqrt(u * u + v * v)
    theta = torch.atan2(v, u)
    au, av = u.abs(), v.abs()
    cheb = torch.maximum(au, av)
    tri_sector = torch.remainder(theta, 2 * math.pi / 3) - math.pi / 3
    masks = torch.stack([
        r <= 1.0,                                                            # disk
        (r <= 1.0) & (r >= 0.55),                                            # ring
        r <= 0.5 / torch.cos(tri_sector).clamp_min(1e-3),                    # triangle (inradius 0.5)
        cheb <= 0.8,                                                         # square
        r <= 0.55 + 0.45 * torch.cos(5 * theta),                             # star
        ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),           # plus
        (u * u + (v / 0.45) ** 2) <= 1.0,                                    # ellipse
        (r <= 1.0) & (v >= -0.1),                                            # half disk
        (cheb <= 0.85) & (cheb >= 0.5),                                      # hollow square
        ((u >= -0.8) & (u <= -0.25) & (av <= 0.8)) | ((v >= 0.25) & (v <= 0.8) & (au <= 0.8)),  # L shape
    ], dim=1)  # B,10,H,W
    return masks.gather(1, label.view(-1, 1, 1, 1).expand(-1, 1, *u.shape[1:])).squeeze(1)


def textured_background(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth coloured noise plus fine grain: (n,3,size,size) in [0,1]."""
    base = torch.rand((n, 3, 1, 1), generator=generator) * 0.6 + 0.2
    low = F.interpolate(torch.rand((n, 3, 4, 4), generator=generator) - 0.5, size=(size, size),
                        mode="bilinear", align_corners=False)
    grain = torch.rand((n, 1, size, size), generator=generator) - 0.5
    return (base + 0.15 * low + 0.05 * grain).clamp(0, 1)


def render_shapes(labels: torch.Tensor, generator: torch.Generator, size: int = 32,
                  background: torch.Tensor | None = None, return_mask: bool = False):
    """Draw one shape per label with random colour/size/position/rotation: (n,3,size,size) in [0,1].
    ``return_mask``: also return each shape's inside mask, (n,1,size,size) float."""
    n = len(labels)
    bg = textured_background(n, size, generator) if background is None else background
    radius = 8.0 + 4.0 * torch.rand(n, generator=generator)                  # 8–12 px
    margin = radius * 0.9
    cx = margin + (size - 1 - 2 * margin) * torch.rand(n, generator=generator)
    cy = margin + (size - 1 - 2 * margin) * torch.rand(n, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    # colour that differs from the background mean by ≥ 0.3 in every channel (circular offset)
    offset = 0.3 + 0.4 * torch.rand((n, 3), generator=generator)
    colour = torch.remainder(bg.mean(dim=(2, 3)) + offset, 1.0)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    dx = (xs[None] - cx.view(-1, 1, 1)) / radius.view(-1, 1, 1)
    dy = (ys[None] - cy.view(-1, 1, 1)) / radius.view(-1, 1, 1)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    inside = _membership(labels, u, v).unsqueeze(1).float()
    shade = 0.9 + 0.1 * torch.rand((n, 1, size, size), generator=generator)   # slight texture on the shape
    images = (bg * (1 - inside) + colour.view(-1, 3, 1, 1) * shade * inside).clamp(0, 1)
    return (images, inside) if return_mask else images


def load_shapes_32(seed: int = 0, n_train: int = 4000, n_test: int = 1000,
                   size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): float32 (N,3,size,size) in [0,1], balanced int64 labels."""
    g = torch.Generator().manual_seed(10_000 + seed)
    k = len(SHAPE_CLASSES)
    y_train = torch.arange(n_train) % k
    y_train = y_train[torch.randperm(n_train, generator=g)]
    y_test = torch.arange(n_test) % k
    y_test = y_test[torch.randperm(n_test, generator=g)]
    return render_shapes(y_train, g, size), y_train, render_shapes(y_test, g, size), y_test
