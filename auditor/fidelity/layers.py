"""Automatic choice of the three ML-Att layers: the input, a middle block and the last spatial block.

Rao et al. compare attribution methods at the *same* layers. We trace one forward pass, list every
module whose output is a spatial map (B, C, h, w) with h, w ≥ 2 in the order the modules finish, and
pick the middle entry and the last entry. When a container returns the very tensor its last child
returned (``nn.Sequential``), the container is kept: hooking it sees the same values and avoids
hooking in-place activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ROLES = ("input", "middle", "last")


@dataclass(frozen=True)
class LayerChoice:
    """One layer at which every method is evaluated.

    ``name`` is the module path inside ``target.model`` ("" for the input); ``shape`` is the per-sample
    output shape (C, h, w) for a single (un-gridded) input.
    """

    role: str
    name: str
    shape: tuple[int, ...]

    @property
    def display(self) -> str:
        if not self.name:
            return "input"
        name = self.name[len("model."):] if self.name.startswith("model.") else self.name
        return f"{name} ({'×'.join(str(s) for s in self.shape)})"


_SKIP = (nn.Identity, nn.Dropout, nn.Dropout2d)


def spatial_modules(model: nn.Module, example: torch.Tensor) -> list[LayerChoice]:
    """Modules with spatial outputs, in the order they finish during one forward pass."""
    finished: list[tuple[str, int, tuple[int, ...]]] = []
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[2:]) >= 2:
                finished.append((name, id(output), tuple(output.shape[1:])))

        return hook

    try:
        for name, module in model.named_modules():
            if name and not isinstance(module, _SKIP):
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    # collapse entries that returned the same tensor object: keep the outermost (last to finish)
    kept: list[tuple[str, int, tuple[int, ...]]] = []
    for entry in finished:
        if kept and kept[-1][1] == entry[1]:
            kept[-1] = entry
        else:
            kept.append(entry)
    return [LayerChoice("", name, shape) for name, _, shape in kept]


def choose_layers(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu",
                  names: tuple[str, str] | None = None) -> tuple[LayerChoice, ...]:
    """(input, middle, last) — or just (input,) for models without spatial layers (e.g. a ViT).

    ``names`` overrides the automatic choice with explicit (middle, last) module paths.
    """
    example = torch.zeros((1, *input_shape), device=device)
    found = spatial_modules(model, example)
    choices = [LayerChoice("input", "", tuple(input_shape))]
    if names is not None:
        by_name = {c.name: c for c in found}
        for role, name in zip(ROLES[1:], names):
            if name not in by_name:
                raise ValueError(f"layer {name!r} has no spatial output; spatial layers: {sorted(by_name)}")
            choices.append(LayerChoice(role, name, by_name[name].shape))
        return tuple(choices)
    if not found:
        return tuple(choices)
    last = found[-1]
    middle = found[(len(found) - 1) // 2]
    if middle.name != last.name:
        choices.append(LayerChoice("middle", middle.name, middle.shape))
    choices.append(LayerChoice("last", last.name, last.shape))
    return tuple(choices)
