"""A plain, seeded training loop (CPU-friendly) and the two quality figures every model records."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    augment=None,
) -> nn.Module:
    """Adam + cross-entropy; ``augment(xb, generator)`` may transform each batch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight init of layers created lazily inside the loop, if any
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, g)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((pred == y).float().mean())


@torch.no_grad()
def attack_success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trigger, target: int,
                        generator: torch.Generator | None = None) -> float:
    """Fraction of triggered non-target test inputs classified as ``target``."""
    keep = y != target
    xt = trigger.apply(x[keep], generator or torch.Generator().manual_seed(1))
    return accuracy(model, xt, torch.full((len(xt),), target, dtype=torch.long))
