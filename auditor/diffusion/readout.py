"""Spurious-feature read-out from class-maximising images, confirmed by intervention.

A spurious feature is something a class's maximising images share that is not the object. Two
candidates are measured for every class (all classes batched):

* ``frame`` — the outer ring (``ring`` px) of the class's generated images, pasted over other-class
  inputs' border (border vs centre energy against the other classes' images is reported alongside);
* ``background texture`` — the high-frequency residual (image − 3×3 blur) of the class's images
  outside the central box, added to other-class inputs' background.

Each candidate is confirmed by **intervention**: the flip rate is the fraction of other-class inputs
(not already assigned to the class) that the model assigns to the class after the transplant.
With a CLIP text encoder (local pipeline) :func:`rank_concepts` ranks a concept vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_CONCEPTS = (
    "frame", "border", "coloured frame", "stripes", "texture", "grass", "water", "sky", "snow", "sand",
    "wood", "brick wall", "text", "watermark", "logo", "sticker", "patch", "checkerboard", "noise",
    "dark background", "bright background", "red", "green", "blue", "yellow", "person", "hand",
)


def ring_mask(h: int, w: int, width: int, device=None) -> torch.Tensor:
    m = torch.ones(h, w, dtype=torch.bool, device=device)
    m[width:h - width, width:w - width] = False
    return m


def outer_mask(h: int, w: int, keep: float = 0.6, device=None) -> torch.Tensor:
    """Everything outside the central box covering ``keep`` of each side."""
    m = torch.ones(h, w, dtype=torch.bool, device=device)
    dh, dw = int(round(h * (1 - keep) / 2)), int(round(w * (1 - keep) / 2))
    m[dh:h - dh, dw:w - dw] = False
    return m


def high_pass(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = torch.full((c, 1, 3, 3), 1 / 9, dtype=x.dtype, device=x.device)
    return x - F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)


@dataclass(frozen=True)
class ClassStatistics:
    """Per-class read-out statistics (arrays of length K)."""

    border_contrast: np.ndarray   # |class mean − other classes' mean| on the ring
    centre_contrast: np.ndarray   # same in the central box
    border_ratio: np.ndarray      # border / centre contrast
    texture_ratio: np.ndarray     # high-frequency energy outside the centre vs other classes'
    border_colour: np.ndarray     # (K, C) mean ring colour


def class_statistics(images: torch.Tensor, ring: int) -> ClassStatistics:
    """``images`` (K, N, C, H, W) → border/centre energy and colour/texture statistics per class."""
    k, _, c, h, w = images.shape
    mean = images.mean(1)                                   # (K, C, H, W)
    others = (mean.sum(0, keepdim=True) - mean) / max(k - 1, 1)
    diff = (mean - others).abs().mean(1)                    # (K, H, W)
    rm = ring_mask(h, w, ring, images.device)
    om = outer_mask(h, w, device=images.device)
    border = diff[:, rm].mean(1)
    centre = diff[:, ~om].mean(1)
    hf = high_pass(images.flatten(0, 1)).pow(2).mean(1).view(k, -1, h, w).mean(1)  # (K, H, W)
    hf_out = hf[:, om].mean(1)
    hf_others = (hf_out.sum() - hf_out) / max(k - 1, 1)
    colour = mean[:, :, rm].mean(-1)
    return ClassStatistics(
        border_contrast=border.cpu().numpy(), centre_contrast=centre.cpu().numpy(),
        border_ratio=(border / (centre + 1e-6)).cpu().numpy(),
        texture_ratio=(hf_out / (hf_others + 1e-9)).cpu().numpy(), border_colour=colour.cpu().numpy(),
    )


CANDIDATES = ("frame", "background texture")


def transplant(candidate: str, sources: torch.Tensor, inputs: torch.Tensor, ring: int) -> torch.Tensor:
    """Put the candidate feature of ``sources`` (B, C, H, W) onto ``inputs`` (B, C, H, W)."""
    h, w = inputs.shape[-2:]
    if candidate == "frame":
        m = ring_mask(h, w, ring, inputs.device)
        return torch.where(m, sources, inputs)
    if candidate == "background texture":
        m = outer_mask(h, w, device=inputs.device).to(inputs.dtype)
        return (inputs + m * high_pass(sources)).clamp(0, 1)
    raise ValueError(candidate)


@torch.no_grad()
def flip_rates(model, images: torch.Tensor, others: torch.Tensor, other_labels: torch.Tensor, ring: int,
               batch: int = 512) -> dict[str, np.ndarray]:
    """Per candidate, per class k: fraction of inputs with label ≠ k (and not predicted k) sent to k.

    ``images`` (K, N, C, H, W): class-maximising images (sources, cycled); ``others`` (M, C, H, W)
    inputs with labels ``other_labels`` (M,). All classes are batched together.
    """
    k, n = images.shape[:2]
    m = others.shape[0]
    base_pred = _predict(model, others, batch)
    src_idx = torch.arange(m) % n
    out = {}
    for cand in CANDIDATES:
        srcs = images[:, src_idx]                                   # (K, M, C, H, W)
        stamped = transplant(cand, srcs.flatten(0, 1), others.repeat(k, 1, 1, 1), ring)
        pred = _predict(model, stamped, batch).view(k, m)
        cls = torch.arange(k)[:, None]
        eligible = (other_labels[None, :] != cls) & (base_pred[None, :] != cls)
        hits = ((pred == cls) & eligible).sum(1).float()
        out[cand] = (hits / eligible.sum(1).clamp(min=1).float()).numpy()
    return out


def _predict(model, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(1).cpu() for i in range(0, len(x), batch)])


@torch.no_grad()
def rank_concepts(generator, optimised_embeddings: torch.Tensor, concepts: list[str], top: int = 3) -> list[list[tuple[str, float]]]:
    """Rank concept words by cosine similarity of their CLIP prompt embeddings to each class's
    optimised soft prompt (mean over tokens and images). ``optimised_embeddings``: (K, N, L, D)."""
    words = generator.encode_text([f"a photo of {c}" for c in concepts]).mean(1)     # (V, D)
    base = generator.encode_text([generator.base_prompt]).mean(1)                  # (1, D)
    cls = optimised_embeddings.float().mean((1, 2)) - base                          # (K, D): what moved
    sim = F.cosine_similarity(cls[:, None, :], (words - base)[None, :, :], dim=-1)  # (K, V)
    order = sim.argsort(dim=1, descending=True)[:, :top]
    return [[(concepts[j], float(sim[i, j])) for j in order[i]] for i in range(len(cls))]
