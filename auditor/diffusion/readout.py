"""Spurious-feature read-out from class-maximising images, confirmed by intervention.

A spurious feature is something a class's maximising images share that is not the object. Two
candidates are measured for every class (all classes batched):

* ``frame`` — a ``ring``-px frame in the mean colour of the outer ring of the class's generated
  images, pasted over other-class inputs' border (border vs centre energy against the other classes'
  images is reported alongside). One colour, not the ring's pixels: a pixel pattern along a ring can
  be an adversarial perturbation, which any model has; a coloured frame has to be learned;
* ``background texture`` — the high-frequency residual (image − 3×3 blur) of the class's images,
  its Fourier phases randomised (texture kept, object outlines destroyed), added to other-class inputs
  outside the central box.

Each candidate is confirmed by **intervention** (:func:`intervene`): the flip rate is the fraction of
other-class inputs (not already assigned to the class) that the model assigns to the class after the
transplant. Sources are taken one image at a time — a class's images need not all show the feature —
the best one chosen on half of the inputs and measured on the other half. The frame has a control,
the same ring moved inward to two positions (``FRAME_CONTROL``), which tells a border feature from an
object shaped like a frame; the texture has one too, plain high-pass noise of the same energy in the
same place (``TEXTURE_CONTROL``), which tells a texture from a class that takes any fine detail.
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
#: the frame of the same source image pasted as a ring around the central box instead of at the border:
#: a feature of the image border loses its effect there, an object drawn by a ring (a hollow square) keeps it;
#: two positions (insets as a share of each side), the larger flip rate counts
FRAME_CONTROL = "frame moved inward"
INWARD_INSETS = (0.15, 0.3)
#: the texture's control: broadband high-pass noise with the texture's energy, in the same place. A class
#: that takes any fine detail (the edge-richest shape of a domain) keeps its flip rate; a texture does not
TEXTURE_CONTROL = "texture replaced by plain noise"


def transplant(candidate: str, sources: torch.Tensor, inputs: torch.Tensor, ring: int,
               phases: torch.Generator | None = None) -> torch.Tensor:
    """Put the candidate feature of ``sources`` (B, C, H, W) onto ``inputs`` (B, C, H, W).

    ``phases``: where the texture's random Fourier phases come from (default: one fixed draw)."""
    h, w = inputs.shape[-2:]
    if candidate == "frame":
        m = ring_mask(h, w, ring, inputs.device)
        return torch.where(m, frame_colour(sources, ring), inputs)
    if candidate == FRAME_CONTROL:
        return _inward_frame(sources, inputs, ring, INWARD_INSETS[0])
    if candidate == FRAME_CONTROL + " further":
        return _inward_frame(sources, inputs, ring, INWARD_INSETS[1])
    if candidate in ("background texture", TEXTURE_CONTROL):
        m = outer_mask(h, w, device=inputs.device).to(inputs.dtype)
        texture = randomise_phase(high_pass(sources), phases)
        if candidate == TEXTURE_CONTROL:
            texture = _same_energy_noise(texture, m)
        return (inputs + m * texture).clamp(0, 1)
    raise ValueError(candidate)


def _same_energy_noise(texture: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """High-pass Gaussian noise (one fixed draw) scaled to the RMS of ``texture`` inside ``mask``, per
    image and channel: the texture's energy, not its structure."""
    noise = torch.randn(texture.shape, generator=torch.Generator().manual_seed(1)).to(texture.device, texture.dtype)
    noise = high_pass(noise)

    def rms(v):
        return (v * mask).pow(2).sum((-2, -1), keepdim=True).div(mask.sum().clamp(min=1)).sqrt()
    return noise * rms(texture) / rms(noise).clamp(min=1e-8)


def frame_colour(sources: torch.Tensor, ring: int) -> torch.Tensor:
    """(B, C, 1, 1): the mean colour of each source's outer ``ring``-px frame."""
    m = ring_mask(*sources.shape[-2:], ring, sources.device)
    return sources[..., m].mean(-1)[..., None, None]


def randomise_phase(x: torch.Tensor, phases: torch.Generator | None = None) -> torch.Tensor:
    """Keep the amplitude spectrum of ``x`` (B, C, H, W), replace its phases by a random draw (one fixed
    draw unless ``phases`` is given): a texture (its power spectrum: stripes stay stripes) survives,
    edges and outlines — which live in the phase — do not. Same energy as ``x``."""
    h, w = x.shape[-2:]
    spectrum = torch.fft.rfft2(x.float())
    phase = torch.rand(spectrum.shape[-2:], generator=phases or torch.Generator().manual_seed(0)) * (2 * torch.pi)
    phase[0, 0] = 0.0                                                     # keep the mean as it is
    out = torch.fft.irfft2(spectrum.abs() * torch.polar(torch.ones_like(phase), phase).to(x.device), s=(h, w))
    return out.to(x.dtype)


def _inward_frame(sources: torch.Tensor, inputs: torch.Tensor, ring: int, inset: float) -> torch.Tensor:
    """The source's frame (its colour, ``ring`` px wide) drawn around the central box instead, ``inset``
    of each side in from the border."""
    h, w = inputs.shape[-2:]
    dh, dw = max(ring, round(h * inset)), max(ring, round(w * inset))
    m = torch.zeros(h, w, dtype=torch.bool, device=inputs.device)
    m[dh:h - dh, dw:w - dw] = ring_mask(h - 2 * dh, w - 2 * dw, ring, inputs.device)
    return torch.where(m, frame_colour(sources, ring), inputs)


@dataclass(frozen=True)
class Intervention:
    """Transplant flip rates per candidate feature (arrays of length K).

    Per class the source image whose candidate flips most of one half of the other-class inputs is
    chosen; ``flip`` is that source's flip rate on the *other* half (no selection bias), ``mean_flip``
    the mean over all sources and inputs, ``source`` the chosen image's index. ``frame_control`` is the
    chosen frame source's flip rate moved inward (the larger of two positions, same held-out half);
    ``texture_control`` the chosen texture source's with its texture replaced by plain noise.
    """

    flip: dict[str, np.ndarray]
    mean_flip: dict[str, np.ndarray]
    source: dict[str, np.ndarray]
    frame_control: np.ndarray
    texture_control: np.ndarray


@torch.no_grad()
def intervene(model, images: torch.Tensor, others: torch.Tensor, other_labels: torch.Tensor, ring: int,
              generator: torch.Generator, max_inputs: int = 96, batch: int = 512,
              sources: dict[str, torch.Tensor] | None = None) -> Intervention:
    """Transplant each class's candidate features, image by image, onto other-class inputs.

    ``images`` (K, N, C, H, W): class-maximising images (sources); ``sources`` optionally gives other
    source images per candidate, (K, P, C, H, W) each (the context probe's); ``others`` (M, C, H, W)
    inputs with labels ``other_labels`` (M,); at most ``max_inputs`` of them are used (seeded
    subsample), split in two halves: one chooses each class's source image, the other measures it.
    """
    sources = {cand: (sources or {}).get(cand, images) for cand in CANDIDATES}
    k = images.shape[0]
    pick = torch.randperm(others.shape[0], generator=generator)[:max_inputs]
    others, other_labels = others[pick.to(others.device)], other_labels[pick.cpu()]
    m = others.shape[0]
    half = torch.zeros(m, dtype=torch.bool)
    half[torch.randperm(m, generator=generator)[: m // 2]] = True          # True: choose, False: measure
    base_pred = _predict(model, others, batch)
    flip, mean_flip, source = {}, {}, {}
    control, texture_control = np.zeros(k), np.zeros(k)
    for cand in CANDIDATES:
        flip[cand], mean_flip[cand], source[cand] = np.zeros(k), np.zeros(k), np.zeros(k, dtype=int)
    for t in range(k):
        eligible = (other_labels != t) & (base_pred != t)                 # (M,)
        choose, measure = eligible & half, eligible & ~half

        for cand in CANDIDATES:
            h = _hits(model, cand, sources[cand][t], others, t, eligible, ring, batch).float()   # (N, M)
            best = int((h[:, choose].sum(1)).argmax())
            flip[cand][t] = float(h[best, measure].sum() / measure.sum().clamp(min=1))
            mean_flip[cand][t] = float(h.sum() / (eligible.sum().clamp(min=1) * h.shape[0]))
            source[cand][t] = best
        for name in (FRAME_CONTROL, FRAME_CONTROL + " further"):
            ctrl = _hits(model, name, sources["frame"][t, source["frame"][t]][None], others, t, eligible, ring,
                         batch).float()[0]
            control[t] = max(control[t], float(ctrl[measure].sum() / measure.sum().clamp(min=1)))
        source_texture = sources["background texture"][t, source["background texture"][t]][None]
        ctrl = _hits(model, TEXTURE_CONTROL, source_texture, others, t, eligible, ring, batch).float()[0]
        texture_control[t] = float(ctrl[measure].sum() / measure.sum().clamp(min=1))
    return Intervention(flip=flip, mean_flip=mean_flip, source=source, frame_control=control,
                        texture_control=texture_control)


def _hits(model, cand: str, sources: torch.Tensor, inputs: torch.Tensor, t: int, eligible: torch.Tensor,
          ring: int, batch: int) -> torch.Tensor:
    """(S, M) bool: input m, stamped with source s's candidate, is an eligible input sent to class t."""
    s, m = sources.shape[0], inputs.shape[0]
    stamped = transplant(cand, sources.repeat_interleave(m, 0), inputs.repeat(s, 1, 1, 1), ring)
    return (_predict(model, stamped, batch).view(s, m) == t) & eligible[None, :]


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
