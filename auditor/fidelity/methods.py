"""Attribution methods at a chosen layer, via Captum.

Every method returns channel-summed maps (B, h, w) at the layer's own resolution (signed; the
localisation metric counts positive mass only). ``point`` is the harness's identity module at the
layer (see :mod:`auditor.fidelity.grids`); at the input the plain Captum input methods are used.

* Gradient — ``Saliency(abs=False)`` at the input, ``LayerGradientXActivation(multiply_by_inputs=False)``
  at a layer (the gradient w.r.t. the layer's activations).
* Input×Gradient — ``InputXGradient`` / ``LayerGradientXActivation``.
* Integrated Gradients — ``IntegratedGradients`` / ``LayerIntegratedGradients`` (zero input baseline).
* Grad-CAM — ``LayerGradCam`` (also at the input, where the "channels" are the colour channels).
* Layer-CAM (Jiang et al. 2021) — Σ_c ReLU(∂y/∂A_c) · A_c, from Captum's layer gradients and
  ``LayerActivation`` (Captum has no Layer-CAM class).
* Occlusion — ``Occlusion`` with a zero patch, input only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    LayerActivation,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Occlusion,
    Saliency,
)
from torch import nn

METHODS: tuple[str, ...] = ("gradient", "ixg", "intgrad", "gradcam", "layercam", "occlusion")
LABELS: Mapping[str, str] = {
    "gradient": "Gradient", "ixg": "Input×Gradient", "intgrad": "Integrated Gradients",
    "gradcam": "Grad-CAM", "layercam": "Layer-CAM", "occlusion": "Occlusion",
}
INPUT_ONLY = frozenset({"occlusion"})
ALL_HEADS = frozenset({"occlusion"})  # computed for every grid head in one pass

# A project map method: (classifier in canonical space, inputs (B,C,H,W), target classes (B,)) → maps
# (B, H, W) or (B, C, H, W). Input-agnostic class maps simply ignore the pixel values of ``x``.
MapFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MethodOptions:
    ig_steps: int = 16
    occlusion_window: int = 0  # 0: a quarter of the cell side
    occlusion_stride: int = 0  # 0: equal to the window (non-overlapping patches)
    cell_side: int = 28


def supports(method: str, role: str) -> bool:
    return role == "input" or method not in INPUT_ONLY


def attribute(
    method: str,
    forward: nn.Module,
    point: nn.Module | None,
    x: torch.Tensor,
    target: torch.Tensor,
    options: MethodOptions,
    custom: Mapping[str, MapFn] | None = None,
) -> torch.Tensor:
    """Channel-summed signed maps (B, h, w). ``point`` None ⇒ attribute to the input ``x``."""
    x = x.detach()
    if custom and method in custom:
        maps = custom[method](forward, x, target).detach()
        return maps.sum(1) if maps.dim() == 4 else maps
    if point is None:
        return _input_method(method, forward, x, target, options)
    if method == "gradient":
        return LayerGradientXActivation(forward, point, multiply_by_inputs=False).attribute(x, target=target).sum(1)
    if method == "ixg":
        return LayerGradientXActivation(forward, point, multiply_by_inputs=True).attribute(x, target=target).sum(1)
    if method == "intgrad":
        lig = LayerIntegratedGradients(forward, point)
        return lig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=options.ig_steps,
                             internal_batch_size=_ig_batch(len(x), options.ig_steps)).sum(1)
    if method == "gradcam":
        return LayerGradCam(forward, point).attribute(x, target=target, relu_attributions=False)[:, 0]
    if method == "layercam":
        grads = LayerGradientXActivation(forward, point, multiply_by_inputs=False).attribute(x, target=target)
        acts = LayerActivation(forward, point).attribute(x)
        return (grads.clamp(min=0) * acts).sum(1)
    raise ValueError(f"method {method!r} is not available at an inner layer")


GRADIENT_FAMILY = frozenset({"gradient", "ixg", "gradcam", "layercam"})


def activations(forward: Callable[[torch.Tensor], torch.Tensor], point: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """The layer's activations A for ``x`` (Captum ``LayerActivation``); the input itself at the input."""
    if point is None:
        return x.detach()
    return LayerActivation(forward, point).attribute(x.detach()).detach()


def gradient_family(methods, forward: nn.Module, point: nn.Module | None, x: torch.Tensor, target: torch.Tensor,
                    acts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient, Input×Gradient, Grad-CAM and Layer-CAM from ONE backward pass (channel-summed (B, h, w)).

    g = ∂y/∂A from Captum (``Saliency(abs=False)`` at the input, ``LayerGradientXActivation(
    multiply_by_inputs=False)`` at a layer); then Gradient = Σ_c g, IxG = Σ_c g·A, Layer-CAM =
    Σ_c ReLU(g)·A, Grad-CAM = Σ_c mean_hw(g_c)·A_c — the same numbers as Captum's ``InputXGradient``,
    ``LayerGradientXActivation`` and ``LayerGradCam`` (checked in tests/test_fidelity.py), at a quarter of
    the cost. ``acts`` may come from a different forward of the same input (the DiFull harness computes
    A over all cells once, and g on the attributed cell only, where every other gradient is zero).
    """
    x = x.detach()
    if point is None:
        g = Saliency(forward).attribute(x, target=target, abs=False)
    else:
        g = LayerGradientXActivation(forward, point, multiply_by_inputs=False).attribute(x, target=target)
    g = g.detach()
    out: dict[str, torch.Tensor] = {}
    for method in methods:
        if method == "gradient":
            out[method] = g.sum(1)
        elif method == "ixg":
            out[method] = (g * acts).sum(1)
        elif method == "layercam":
            out[method] = (g.clamp(min=0) * acts).sum(1)
        elif method == "gradcam":
            out[method] = (g.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
        else:
            raise ValueError(f"{method} is not a gradient-family method")
    return out


def attribute_all_heads(method: str, forward_all: nn.Module, x: torch.Tensor, options: MethodOptions) -> torch.Tensor:
    """(B, heads, H, W) channel-summed maps for a forward returning one score per head (B, heads)."""
    if method != "occlusion":
        raise ValueError(f"{method} is not computed for all heads at once")
    heads = forward_all(x[:1]).shape[1]
    window = options.occlusion_window or max(2, options.cell_side // 4)
    stride = options.occlusion_stride or window
    occ = Occlusion(forward_all)
    attr = occ.attribute(x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
                         baselines=0.0, target=None, perturbations_per_eval=16)
    return attr.reshape(len(x), heads, *x.shape[1:]).sum(2)


def _input_method(method: str, forward: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  options: MethodOptions) -> torch.Tensor:
    if method == "gradient":
        return Saliency(forward).attribute(x, target=target, abs=False).sum(1)
    if method == "ixg":
        return InputXGradient(forward).attribute(x, target=target).sum(1)
    if method == "intgrad":
        ig = IntegratedGradients(forward)
        return ig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=options.ig_steps,
                            internal_batch_size=_ig_batch(len(x), options.ig_steps)).sum(1)
    if method == "occlusion":
        window = options.occlusion_window or max(2, options.cell_side // 4)
        stride = options.occlusion_stride or window
        occ = Occlusion(forward)
        attr = occ.attribute(x, sliding_window_shapes=(x.shape[1], window, window), strides=(x.shape[1], stride, stride),
                             baselines=0.0, target=target, perturbations_per_eval=16)
        return attr.sum(1)
    if method in ("gradcam", "layercam"):
        raise ValueError(f"{method} at the input needs the harness's input point")
    raise ValueError(f"unknown method {method!r}")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, h, w) maps to the input resolution (Captum's interpolate)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return LayerAttribution.interpolate(maps[:, None], size, interpolate_mode="bilinear")[:, 0]


def _ig_batch(rows: int, steps: int, cap: int = 512) -> int:
    """All interpolation steps in one pass for small batches; chunks of ``cap`` rows for big ones."""
    return max(rows, min(rows * steps, cap))
