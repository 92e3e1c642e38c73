"""FlowAM building blocks: activation flows, the (flow-guided) activation-maximisation loop, priors.

Everything works on a batch holding every class at once (row ``i`` maximises class ``classes[i]``).
A *profile* of a layer's activation is its channel vector: the spatial mean for conv/per-point maps,
the activation itself for flat layers. A class's *flow* is the mean profile of that class's inputs at
each chosen layer; distances to it are normalised by the layer's within-class spread so that a typical
class input sits at distance ≈ 1 at every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auditor.hooks import LayerRef, capture_activations


def profile(act: torch.Tensor) -> torch.Tensor:
    """(B, C, …) → (B, C): spatial/point mean; flat activations pass through."""
    return act.flatten(2).mean(2) if act.ndim >= 3 else act.flatten(1)


@dataclass(frozen=True, eq=False)
class Flows:
    """Per layer (by label): class mean profiles ``means[label]`` (K, C) and a scalar ``spread``."""

    layers: tuple[LayerRef, ...]
    means: dict[str, torch.Tensor]
    spread: dict[str, torch.Tensor]
    counts: torch.Tensor  # (K,) inputs per class behind each flow
    source: str

    def distances(self, profiles: dict[str, torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
        """Normalised squared distance of each row's profile to its class flow: (B, L)."""
        cols = []
        for ref in self.layers:
            diff = profiles[ref.label] - self.means[ref.label][classes]
            cols.append(diff.pow(2).sum(1) / self.spread[ref.label].pow(2))
        return torch.stack(cols, 1)


def layer_profiles(model: nn.Module, layers: Sequence[LayerRef], x: torch.Tensor,
                   batch_size: int = 128) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Profiles at every layer and logits for ``x``, without gradients, in batches."""
    out: dict[str, list[torch.Tensor]] = {ref.label: [] for ref in layers}
    logits = []
    with torch.no_grad(), capture_activations(model, layers, detach=True) as acts:
        for i in range(0, len(x), batch_size):
            logits.append(model(x[i:i + batch_size]))
            for ref in layers:
                out[ref.label].append(profile(acts[ref.label]))
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(logits)


def estimate_flows(model: nn.Module, layers: Sequence[LayerRef], x: torch.Tensor, y: torch.Tensor,
                   num_classes: int, source: str) -> Flows:
    """Class mean profiles and pooled within-class spread from labelled inputs ``x``/``y``."""
    profiles, _ = layer_profiles(model, layers, x)
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)
    means, spread = {}, {}
    for ref in layers:
        p = profiles[ref.label]
        sums = torch.zeros((num_classes, p.shape[1]), dtype=p.dtype, device=p.device).index_add_(0, y, p)
        global_mean = p.mean(0, keepdim=True)
        m = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], global_mean)
        within = (p - m[y]).pow(2).sum(1)
        # pooled spread; falls back to the between-class spread when every class has one input
        s2 = within.mean() if bool((counts > 1).any()) else (m - global_mean).pow(2).sum(1).mean()
        means[ref.label] = m
        spread[ref.label] = s2.clamp_min(1e-8).sqrt()
    return Flows(tuple(layers), means, spread, counts, source)


# --------------------------------------------------------------------------------------------------
# Priors


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image: (B,)."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


def knn_spacing(points: torch.Tensor, k: int) -> torch.Tensor:
    """Point continuity: mean distance of each point to its ``k`` nearest neighbours, per cloud: (B,)."""
    d = torch.cdist(points, points)  # (B, N, N)
    d = d + torch.eye(points.shape[1], device=points.device, dtype=points.dtype) * 1e6
    return d.topk(k, dim=2, largest=False).values.mean((1, 2))


def chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric Chamfer distance (mean squared nearest-neighbour distance both ways): (B,)."""
    d = torch.cdist(a, b).pow(2)
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


# --------------------------------------------------------------------------------------------------
# The optimisation loop


@dataclass(frozen=True)
class Priors:
    """Input-space priors. Images: jitter (pixels), total variation; points: kNN continuity."""

    modality: str
    lower: torch.Tensor
    upper: torch.Tensor
    jitter: int = 2
    tv_weight: float = 0.0
    continuity_weight: float = 0.0
    knn: int = 4

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        if self.modality == "points":
            return self.continuity_weight * knn_spacing(x, self.knn) if self.continuity_weight else x.new_zeros(len(x))
        return self.tv_weight * total_variation(x) if self.tv_weight else x.new_zeros(len(x))

    def clamp_(self, x: torch.Tensor) -> None:
        x.copy_(torch.maximum(torch.minimum(x, self.upper), self.lower))

    def shift(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random translation (images only): the AM image must work wherever it lands."""
        if self.modality != "image" or self.jitter <= 0:
            return x
        dy, dx = (torch.randint(-self.jitter, self.jitter + 1, (2,), generator=generator)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@dataclass(frozen=True, eq=False)
class AMResult:
    x: torch.Tensor            # (B, …) optimised inputs
    logits: torch.Tensor       # (B, K) on the final (un-jittered) inputs
    profiles: dict[str, torch.Tensor]
    distances: torch.Tensor    # (B, L) normalised squared distance to the class flow

    def rows(self, sl: slice) -> AMResult:
        """The same result for a slice of the batch's rows."""
        return AMResult(self.x[sl], self.logits[sl], {n: v[sl] for n, v in self.profiles.items()}, self.distances[sl])


def maximise(
    model: nn.Module,
    flows: Flows,
    classes: torch.Tensor,
    x0: torch.Tensor,
    priors: Priors,
    *,
    steps: int,
    lr: float,
    flow_weight: torch.Tensor | float,
    generator: torch.Generator,
    tick: Callable[[int], None] = lambda step: None,
    ce_weight: float = 0.0,
    settle_steps: int = 0,
) -> AMResult:
    """Maximise ``z_c(x) + ce_weight · log p_c(x) − flow_weight · mean_l d_l(x, flow_c) − prior(x)`` for
    every row at once.

    ``flow_weight`` is a scalar or one weight per row: rows with weight 0 are plain (unconstrained)
    AM with the same priors, so both kinds share one batch. Adam on the raw input, clamped to the
    priors' bounds after every step. ``steps`` run under the priors' random jitter; then, for images
    with jitter, ``settle_steps`` more run on the un-shifted image, because an image optimised only under
    random shifts can miss its class at its own position (seen on digits MobileNets and ViTs).
    """
    weights = torch.as_tensor(flow_weight, dtype=x0.dtype, device=x0.device).expand(len(classes))
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    rows = torch.arange(len(classes), device=x.device)
    layers = flows.layers if bool((weights > 0).any()) else ()
    if priors.modality != "image" or priors.jitter <= 0:
        settle_steps = 0
    with capture_activations(model, layers) as acts:
        for step in range(steps + settle_steps):
            tick(min(step, steps - 1))
            opt.zero_grad(set_to_none=True)
            logits = model(priors.shift(x, generator) if step < steps else x)
            loss = -logits[rows, classes] + priors.penalty(x)
            if ce_weight:
                loss = loss + ce_weight * F.cross_entropy(logits, classes, reduction="none")
            if layers:
                profiles = {ref.label: profile(acts[ref.label]) for ref in layers}
                loss = loss + weights * flows.distances(profiles, classes).mean(1)
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                priors.clamp_(x)
    x = x.detach()
    profiles, logits = layer_profiles(model, flows.layers, x)
    return AMResult(x, logits, profiles, flows.distances(profiles, classes))


def image_init(n: int, shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Mid-grey with a little uniform noise (the noise breaks symmetry; seeds differ per run)."""
    return (0.5 + 0.1 * (torch.rand((n, *shape), generator=generator) - 0.5)).to(device)


def points_init(n: int, num_points: int, generator: torch.Generator, device: torch.device,
                lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Points spread uniformly in a ball of half the data box, around the box centre."""
    direction = torch.randn((n, num_points, 3), generator=generator)
    direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-9)
    radius = torch.rand((n, num_points, 1), generator=generator) ** (1.0 / 3.0)
    centre, half = (upper + lower).cpu() / 2, (upper - lower).cpu() / 2
    return (centre + 0.5 * half * radius * direction).to(device)


def bn_statistics_loss(acts: dict[str, torch.Tensor], norms: dict[str, nn.Module]) -> torch.Tensor:
    """DeepInversion prior: batch mean/var of each BatchNorm input vs. its running statistics."""
    total = None
    for name, bn in norms.items():
        a = acts[name]
        dims = [0] + list(range(2, a.ndim))
        mean, var = a.mean(dims), a.var(dims, unbiased=False)
        term = (mean - bn.running_mean).norm() + (var - bn.running_var).norm()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def synthesise_confident(
    model: nn.Module,
    num_classes: int,
    per_class: int,
    make_init: Callable[[int, torch.Generator], torch.Tensor],
    priors: Priors,
    *,
    steps: int,
    lr: float,
    confidence: float,
    bn_weight: float,
    generator: torch.Generator,
    tick: Callable[[int], None] = lambda step: None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Data-free class inputs: minimise cross-entropy to the class (with the priors and, where the
    model has BatchNorm layers, their running statistics) and stop moving each input as soon as the
    model assigns it to its class with probability ≥ ``confidence``. Returns (x, y, p_class)."""
    classes = torch.arange(num_classes).repeat_interleave(per_class)
    x = make_init(len(classes), generator).requires_grad_(True)
    classes = classes.to(x.device)
    rows = torch.arange(len(classes), device=x.device)
    norms = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}
    refs = [LayerRef(name, name, use_input=True) for name in norms] if bn_weight > 0 else []
    opt = torch.optim.Adam([x], lr=lr)
    done = torch.zeros(len(classes), dtype=torch.bool, device=x.device)
    with capture_activations(model, refs) as acts:
        for step in range(steps):
            tick(step)
            opt.zero_grad(set_to_none=True)
            logits = model(priors.shift(x, generator))
            with torch.no_grad():
                done |= F.softmax(logits, 1)[rows, classes] >= confidence
            if bool(done.all()):
                break
            loss = F.cross_entropy(logits, classes, reduction="none") + priors.penalty(x)
            loss = loss.masked_fill(done, 0.0).sum()
            if refs:
                loss = loss + bn_weight * bn_statistics_loss(acts, norms)
            loss.backward()
            before = x.detach().clone()
            opt.step()
            with torch.no_grad():
                priors.clamp_(x)
                x[done] = before[done]  # confident inputs stay where they are (Adam momentum aside)
    x = x.detach()
    with torch.no_grad():
        p = F.softmax(model(x), 1)[rows, classes]
    return x, classes, p
