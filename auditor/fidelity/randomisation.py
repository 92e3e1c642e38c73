"""Cascading model randomisation (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

Weights are re-initialised top-down — logits first, then one block at a time — on a *deep copy* of the
model (the audited model is never touched), the explanation is recomputed at every stage and compared
with the trained model's: Spearman rank correlation of |map| and of the signed map, and SSIM of the
normalised |map|. A faithful explanation changes as the model is destroyed; one that does not is the
input (or the prior) talking, not the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditor.fidelity.metrics import normalise_abs, spearman_rows, ssim_rows


@dataclass(frozen=True)
class RandomisationCurve:
    """Similarity to the trained model's maps per stage (stage 0 = trained, so 1.0)."""

    method: str
    layer: str
    stages: tuple[str, ...]
    spearman_abs: tuple[float, ...]
    spearman_signed: tuple[float, ...]
    ssim: tuple[float, ...]

    @property
    def final_abs(self) -> float:
        return self.spearman_abs[-1] if self.spearman_abs else math.nan

    @property
    def final_signed(self) -> float:
        return self.spearman_signed[-1] if self.spearman_signed else math.nan

    @property
    def passes(self) -> bool:
        """Sanity check passed: at full randomisation |ρ| of the absolute map is below 0.5."""
        return bool(abs(self.final_abs) < 0.5) if math.isfinite(self.final_abs) else False


def parametrised_modules(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Modules owning parameters directly, in the order they are first called."""
    order: list[str] = []
    handles = []
    owners = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]

    def make_hook(name: str):
        def hook(*_):
            if name not in order:
                order.append(name)

        return hook

    try:
        for name, module in model.named_modules():
            if name in owners:
                handles.append(module.register_forward_pre_hook(make_hook(name)))
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    # parameters of modules never called (e.g. a class token on the root) count as the first block
    return [n for n in owners if n not in order] + order


def randomisation_stages(model: nn.Module, example: torch.Tensor, max_stages: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Top-down stages: (label, module names re-initialised *at* this stage); cumulative when applied."""
    names = list(reversed(parametrised_modules(model, example)))
    if not names:
        return ()
    k = max(1, min(max_stages, len(names)))
    groups = [names[round(i * len(names) / k): round((i + 1) * len(names) / k)] for i in range(k)]
    stages = []
    for group in groups:
        short = [g[len("model."):] if g.startswith("model.") else g for g in group]
        label = short[0] if len(short) == 1 else f"{short[0]} … {short[-1]}"
        stages.append((label, tuple(group)))
    return tuple(stages)


@torch.no_grad()
def reinitialise_(model: nn.Module, names: tuple[str, ...], generator: torch.Generator) -> None:
    """He-uniform weights, small uniform biases; norm layers back to γ=1, β=0. Seeded, in place."""
    for name in names:
        module = dict(model.named_modules())[name]  # names from onnx2pytorch may contain dots
        for pname, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                bound = math.sqrt(6.0 / max(fan_in, 1))
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            elif "bias" in pname or isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                    p.fill_(1.0 if "weight" in pname else 0.0)
                else:
                    weight = getattr(module, "weight", None)
                    fan_in = weight[0].numel() if isinstance(weight, torch.Tensor) and weight.dim() >= 2 else p.numel()
                    bound = 1.0 / math.sqrt(max(fan_in, 1))
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def similarity(reference: np.ndarray, maps: np.ndarray) -> tuple[float, float, float]:
    """(mean Spearman of |maps|, mean signed Spearman, mean SSIM of normalised |maps|) over rows."""
    rho_abs = spearman_rows(np.abs(reference), np.abs(maps))
    rho_signed = spearman_rows(reference, maps)
    s = ssim_rows(normalise_abs(reference), normalise_abs(maps))
    return float(np.mean(rho_abs)), float(np.mean(rho_signed)), float(np.mean(s))
