"""Cascading model randomisation (Adebayo et al. 2018) for activation-maximisation explanations.

Layers are re-initialised top-down, one block at a time, on a *deep copy* of the model (the audited
model is never touched); after each block the caller reruns its AM and the result is compared with the
trained model's: Spearman rank correlation of pixels for images, Chamfer distance for point clouds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from auditor.hooks import display_name, weight_layers_in_order

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def randomisation_blocks(model: nn.Module, example: torch.Tensor, max_stages: int) -> list[list[str]]:
    """Parameterised modules grouped into at most ``max_stages`` blocks, *top (output side) first*.

    Each weight layer (conv/linear/…) is a block with the normalisation layers that follow it; when
    there are more blocks than ``max_stages``, consecutive blocks are merged as evenly as possible.
    """
    names = weight_layers_in_order(model, example)
    modules = dict(model.named_modules())
    blocks: list[list[str]] = []
    for name in names:
        if isinstance(modules[name], _NORM_TYPES) and blocks:
            blocks[-1].append(name)
        else:
            blocks.append([name])
    blocks.reverse()
    if len(blocks) > max_stages > 0:
        size = len(blocks) / max_stages
        merged = [[n for b in blocks[round(i * size): round((i + 1) * size)] for n in b] for i in range(max_stages)]
        blocks = [m for m in merged if m]
    return blocks


def describe_block(block: Sequence[str]) -> str:
    shown = [display_name(n) for n in block]
    return shown[0] if len(shown) == 1 else f"{shown[0]} … {shown[-1]} ({len(shown)} layers)"


@torch.no_grad()
def reinitialise_(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> None:
    """Fresh random weights from a seeded generator (no global RNG): weights and biases
    U(−1/√fan_in, 1/√fan_in) like PyTorch's default init; norm layers reset to identity."""
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        if isinstance(m, _NORM_TYPES):
            for attr, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                t = getattr(m, attr, None)
                if isinstance(t, torch.Tensor):
                    t.fill_(value)
            continue
        weight = getattr(m, "weight", None)
        fan_in = weight[0].numel() if isinstance(weight, torch.Tensor) and weight.ndim > 1 else None
        for _, p in m.named_parameters(recurse=False):
            fan = fan_in if fan_in is not None else max(p.numel(), 1)
            bound = 1.0 / math.sqrt(fan)
            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1).mul_(bound).to(p.device, p.dtype))


def randomised_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, with frozen parameters (the original is left as it is)."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def spearman_per_row(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation of each row's flattened values (ties averaged); NaN for constant rows."""
    a_np, b_np = a.flatten(1).double().cpu().numpy(), b.flatten(1).double().cpu().numpy()
    out = np.full(len(a_np), np.nan)
    for i in range(len(a_np)):
        if np.ptp(a_np[i]) > 0 and np.ptp(b_np[i]) > 0:
            out[i] = float(stats.spearmanr(a_np[i], b_np[i]).statistic)
    return out
