"""Spurious-feature read-out from class-maximising images, confirmed by intervention.

A spurious feature is something a class's maximising images share that is not the object. Two
candidates are measured for every class (all classes batched):

* ``frame`` — a ``ring``-px frame in the mean colour of the outer ring of the class's generated
  images, pasted over other-class inputs' border (border vs centre energy against the other classes'
  images is reported alongside). One colour, not the ring's pixels: a pixel pattern along a ring can
  be an adversarial perturbation, which any model has; a coloured frame has to be learned;
* ``background texture`` — the periodic part of the background of the source images: the
  ``TEXTURE_PEAKS`` strongest Fourier components (chosen on the high-frequency residual, image − 3×3
  blur, outside the central box), phases kept, added to the whole of other-class inputs. Stripes and
  checks live in a few Fourier peaks, so they survive; an object outline spreads its energy over the
  whole spectrum, so it does not. The sources are normally single gratings found by
  :func:`scan_gratings`, which tries every grating of a bank on a few inputs at once.

Each candidate is confirmed by **intervention** (:func:`intervene`): the flip rate is the fraction of
other-class inputs (not already assigned to the class) that the model assigns to the class after the
transplant. Sources are taken one image at a time — a class's images need not all show the feature —
the best one chosen on half of the inputs and measured on the other half. The frame has a control,
the same ring moved inward to two positions (``FRAME_CONTROL``), which tells a border feature from an
object shaped like a frame; the texture has one too, plain high-pass noise of the same energy in the
same place (``TEXTURE_CONTROL``), which tells a texture from a class that takes any fine detail, and
the texture shifted by half its period (``TEXTURE_SHIFT_CONTROL``), which tells a learned pattern from
a class that takes any periodic detail (the star of the shapes domain takes gratings whatever their
phase in clean models). So only textures the model takes at their place are flagged: a planted stripe
texture flipped 58 % of a dev model's inputs at its phase, 4 % shifted. A texture a model takes at any
phase cannot be told from such a class by this read-out, and that is common: 6 of 10 dev models with
stripes of period 4–8 px took them at either phase (stop 32, bench/RESULTS.md §5).
With a CLIP text encoder (local pipeline) :func:`rank_concepts` ranks a concept vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
#: the texture's second control: shifted by half its period (each kept Fourier component's phase + π)
TEXTURE_SHIFT_CONTROL = "texture shifted by half a period"
#: descriptive checks on the chosen texture, recorded per class on request (``texture_checks``; stop 32,
#: bench/RESULTS.md §5). They do not decide a flag: on the dev models none told a learned texture from
#: what clean models take. Turned by 90° (square images; mirrored left-right otherwise): a model that
#: learned oriented stripes loses them, a class that takes gratings of any orientation keeps them
TEXTURE_TURN_CHECK = "texture turned by 90 degrees"
#: at half its contrast: how steeply the effect falls with the texture's strength
TEXTURE_HALF_CHECK = "texture at half contrast"
#: pasted only outside the part of each input the model looks at (:func:`object_mask`): a learned
#: background texture keeps its effect, a grating that works by breaking up the object loses it
TEXTURE_OFF_OBJECT_CHECK = "texture kept off the object"
TEXTURE_CHECKS = (TEXTURE_TURN_CHECK, TEXTURE_HALF_CHECK, TEXTURE_OFF_OBJECT_CHECK)
#: share of each input's pixels :func:`object_mask` calls the object
OBJECT_SHARE = 0.25
#: how many Fourier components (each with its mirror image) make a texture: a stripe pattern is one,
#: a square wave's first harmonic or a check pattern a second
TEXTURE_PEAKS = 2


def transplant(candidate: str, sources: torch.Tensor, inputs: torch.Tensor, ring: int | torch.Tensor) -> torch.Tensor:
    """Put the candidate feature of ``sources`` (B, C, H, W) onto ``inputs`` (B, C, H, W). ``ring``: the
    frame width in px, one for all or (B,) per source (the colour scan's frames have their own)."""
    if isinstance(ring, torch.Tensor):
        out = inputs.clone()
        for width in ring.unique().tolist():
            pick = (ring == width).to(inputs.device)
            out[pick] = transplant(candidate, sources[pick], inputs[pick], int(width))
        return out
    h, w = inputs.shape[-2:]
    if candidate == "frame":
        m = ring_mask(h, w, ring, inputs.device)
        return torch.where(m, frame_colour(sources, ring), inputs)
    if candidate == FRAME_CONTROL:
        return _inward_frame(sources, inputs, ring, INWARD_INSETS[0])
    if candidate == FRAME_CONTROL + " further":
        return _inward_frame(sources, inputs, ring, INWARD_INSETS[1])
    if candidate in ("background texture", TEXTURE_CONTROL):
        texture = periodic_texture(sources)
        if candidate == TEXTURE_CONTROL:
            texture = _same_energy_noise(texture)
        return (inputs + texture).clamp(0, 1)
    if candidate == TEXTURE_SHIFT_CONTROL:
        return (inputs - periodic_texture(sources)).clamp(0, 1)
    if candidate == TEXTURE_TURN_CHECK:
        texture = periodic_texture(sources)
        texture = torch.rot90(texture, 1, (-2, -1)) if h == w else texture.flip(-1)
        return (inputs + texture).clamp(0, 1)
    if candidate == TEXTURE_HALF_CHECK:
        return (inputs + 0.5 * periodic_texture(sources)).clamp(0, 1)
    raise ValueError(candidate)


def object_mask(model, inputs: torch.Tensor, share: float = OBJECT_SHARE, batch: int = 256) -> torch.Tensor:
    """(M, 1, H, W) bool: per input, the ``share`` of its pixels with the largest input gradient (3×3
    smoothed, summed over channels) of the class the model gives it, dilated by one pixel: the part
    of the input the model's decision rests on, found without a segmentation model."""
    masks = []
    for i in range(0, inputs.shape[0], batch):
        with torch.enable_grad():
            x = inputs[i:i + batch].detach().clone().requires_grad_(True)
            logits = model(x)
            grad, = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
        g = F.avg_pool2d(grad.abs().sum(1, keepdim=True), 3, 1, 1)
        cut = g.flatten(1).quantile(1 - share, dim=1)[:, None, None, None]
        # pixels the decision does not depend on at all (zero gradient) are never the object
        masks.append(F.max_pool2d(((g >= cut) & (g > 0)).float(), 3, 1, 1) > 0)
    return torch.cat(masks)


def _same_energy_noise(texture: torch.Tensor) -> torch.Tensor:
    """High-pass Gaussian noise (one fixed draw) scaled to the RMS of ``texture``, per image and
    channel: the texture's energy, not its structure."""
    noise = torch.randn(texture.shape, generator=torch.Generator().manual_seed(1)).to(texture.device, texture.dtype)
    noise = high_pass(noise)

    def rms(v):
        return v.pow(2).mean((-2, -1), keepdim=True).sqrt()
    return noise * rms(texture) / rms(noise).clamp(min=1e-8)


def periodic_texture(sources: torch.Tensor, peaks: int = TEXTURE_PEAKS) -> torch.Tensor:
    """The periodic part of each source's background, (B, C, H, W) over the whole image: outside the
    central box, the ``peaks`` Fourier components whose high-pass residual has the largest amplitude
    (summed over channels; smooth shading does not count), taken from the image itself with their
    phases and rescaled by the box's area so a texture covering the background keeps its contrast."""
    h, w = sources.shape[-2:]
    mask = outer_mask(h, w, device=sources.device).to(sources.dtype)
    amplitude = torch.fft.rfft2((high_pass(sources) * mask).float()).abs().sum(1).flatten(1)  # (B, H*(W//2+1))
    amplitude[:, 0] = 0.0
    background_mean = (sources * mask).sum((-2, -1), keepdim=True) / mask.sum()
    spectrum = torch.fft.rfft2(((sources - background_mean) * mask).float())           # (B, C, H, W//2+1)
    top = amplitude.topk(peaks, dim=1).indices
    keep = torch.zeros_like(amplitude, dtype=torch.bool).scatter_(1, top, True).view(spectrum.shape[0], 1,
                                                                                       *spectrum.shape[-2:])
    texture = torch.fft.irfft2(spectrum * keep, s=(h, w)) / mask.mean()
    return texture.to(sources.dtype)


def frame_colour(sources: torch.Tensor, ring: int) -> torch.Tensor:
    """(B, C, 1, 1): the mean colour of each source's outer ``ring``-px frame."""
    m = ring_mask(*sources.shape[-2:], ring, sources.device)
    return sources[..., m].mean(-1)[..., None, None]


#: phases per grating frequency: a model that learned a pattern at one phase loses a third of its response
#: 45° off (8 phases: at most 22.5° off); on a dev model the best grating flipped 0.41 with 4, 0.48 with 8
GRATING_PHASES = 8


def grating_bank(channels: int, h: int, w: int, amplitude: float, max_period: float = 8.0,
                 phases: int = GRATING_PHASES) -> torch.Tensor:
    """(G, C, H, W) source images: mid grey plus one grey sinusoidal grating each, for every Fourier
    frequency of an H×W image with a period of at most ``max_period`` px (along either axis), at
    ``phases`` phases, ``amplitude`` in pixel units. Periods a texture has, not shading."""
    ky = torch.fft.fftfreq(h) * h
    kx = torch.fft.rfftfreq(w) * w
    fy, fx = torch.meshgrid(ky, kx, indexing="ij")
    keep = torch.maximum(fy.abs() / h, fx.abs() / w) >= 1.0 / max_period
    # on the columns kx = 0 and kx = W/2 the frequencies ky and -ky give the same grating
    keep &= ~(((fx == 0) | (fx == w / 2)) & (fy < 0))
    fy, fx = fy[keep], fx[keep]                                                       # (F,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    angle = 2 * torch.pi * (fy[:, None, None] * ys / h + fx[:, None, None] * xs / w)    # (F, H, W)
    shift = torch.arange(phases, dtype=torch.float32) * (2 * torch.pi / phases)
    waves = torch.cos(angle[:, None] + shift[None, :, None, None]).flatten(0, 1)       # (F*phases, H, W)
    # at the Nyquist frequency some phases sample the wave at its zeros: drop what has lost its contrast
    waves = waves[waves.pow(2).mean((-2, -1)) > 0.25]
    return (0.5 + amplitude * waves)[:, None].expand(-1, channels, -1, -1)


@torch.no_grad()
def scan_gratings(model, victims: torch.Tensor, k: int, amplitude: float, per_class: int,
                  batch: int = 512) -> torch.Tensor:
    """Per class, the ``per_class`` gratings of :func:`grating_bank` that, transplanted as a texture onto
    ``victims`` (V, C, H, W), send most of the victims the model puts elsewhere to the class. One
    forward pass per grating and victim serves every class. Returns (K, per_class, C, H, W) on the CPU."""
    c, h, w = victims.shape[1:]
    bank = grating_bank(c, h, w, amplitude).to(victims.device, victims.dtype)         # (G, C, H, W)
    v = victims.shape[0]
    base = model(victims).argmax(1)                                                    # (V,)
    texture = periodic_texture(bank)                                                   # (G, C, H, W)
    counts = []
    for i in range(0, bank.shape[0], max(1, batch // v)):
        chunk = texture[i:i + max(1, batch // v)]
        pred = model((victims[None] + chunk[:, None]).clamp(0, 1).flatten(0, 1)).argmax(1).view(-1, v)
        moved = pred != base[None, :]
        counts.append(F.one_hot(torch.where(moved, pred, k), k + 1)[..., :k].sum(1))   # (g, K)
    counts = torch.cat(counts).float()                                                 # (G, K)
    best = counts.topk(per_class, dim=0).indices.T                                     # (K, per_class)
    return bank[best.flatten().cpu()].view(k, per_class, c, h, w).cpu()


#: grey levels per channel of the frame colour bank: 33 for one channel, 9 per channel (729 colours) for RGB.
#: A model that learned a frame takes it in a narrow colour range (a foreign digits model: a 2-px frame of
#: grey 0.38 flipped 0.78 of other-class inputs, of grey 0.30 only 0.47)
FRAME_LEVELS = {1: 33, 3: 9}
#: frame widths of the scan as shares of the shorter side: 1–4 px at 28–32 px. A model that learned a
#: wide frame may ignore a narrow one of the right colour (a 3-px frame model: 0.98 with its frame, 0.09
#: with a 2-px frame of the same grey)
FRAME_WIDTH_SHARES = (1 / 32, 1 / 16, 3 / 32, 1 / 8)


def frame_colour_bank(channels: int) -> torch.Tensor:
    """(F, C) every colour of a regular grid over [0, 1]^C (:data:`FRAME_LEVELS` levels per channel)."""
    levels = torch.linspace(0.0, 1.0, FRAME_LEVELS.get(channels, 5))
    grid = torch.meshgrid(*([levels] * channels), indexing="ij")
    return torch.stack([g.flatten() for g in grid], 1)


def frame_widths(h: int, w: int) -> tuple[int, ...]:
    """The scanned frame widths in px for an H×W input (:data:`FRAME_WIDTH_SHARES`, at least 1 px)."""
    return tuple(sorted({max(1, round(min(h, w) * share)) for share in FRAME_WIDTH_SHARES}))


@torch.no_grad()
def scan_frames(model, victims: torch.Tensor, k: int, per_class: int,
                batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the ``per_class`` one-colour frames (every colour of :func:`frame_colour_bank` at every
    width of :func:`frame_widths`) that, pasted onto ``victims`` (V, C, H, W), send most of the victims
    the model puts elsewhere to the class. One forward pass per frame and victim serves every class.
    Returns (K, per_class, C, H, W) images of the chosen colours (:func:`transplant` reads the colour off
    their outer ring) and (K, per_class) their widths, on the CPU."""
    c, h, w = victims.shape[1:]
    colours = frame_colour_bank(c).to(victims.device, victims.dtype)                  # (F, C)
    widths = frame_widths(h, w)
    v = victims.shape[0]
    base = model(victims).argmax(1)                                                    # (V,)
    step = max(1, batch // v)
    counts = []
    for width in widths:
        ring_px = ring_mask(h, w, width, victims.device)
        for i in range(0, colours.shape[0], step):
            colour = colours[i:i + step, None, :, None, None]                           # (f, 1, C, 1, 1)
            stamped = torch.where(ring_px, colour, victims[None])                      # (f, V, C, H, W)
            pred = model(stamped.flatten(0, 1)).argmax(1).view(-1, v)
            moved = pred != base[None, :]
            counts.append(F.one_hot(torch.where(moved, pred, k), k + 1)[..., :k].sum(1))  # (f, K)
    counts = torch.cat(counts).float()                                                 # (widths × F, K)
    best = counts.topk(per_class, dim=0).indices.T                                     # (K, per_class)
    chosen = colours[best.flatten() % len(colours)].view(k, per_class, c, 1, 1)
    chosen_widths = torch.tensor(widths)[(best // len(colours)).cpu()]
    return chosen.expand(-1, -1, -1, h, w).contiguous().cpu(), chosen_widths


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
    ``texture_control`` the chosen texture source's with its texture replaced by plain noise,
    ``texture_shift_control`` with its texture shifted by half a period.
    ``frame_width``: the chosen frame source's width (the control moves a frame of that width).
    """

    flip: dict[str, np.ndarray]
    mean_flip: dict[str, np.ndarray]
    source: dict[str, np.ndarray]
    frame_control: np.ndarray
    texture_control: np.ndarray
    texture_shift_control: np.ndarray
    frame_width: np.ndarray
    #: the chosen texture's flip rate under each of :data:`TEXTURE_CHECKS` (same held-out half)
    texture_checks: dict[str, np.ndarray] = field(default_factory=dict)


@torch.no_grad()
def intervene(model, images: torch.Tensor, others: torch.Tensor, other_labels: torch.Tensor, ring: int,
              generator: torch.Generator, max_inputs: int = 96, batch: int = 512,
              sources: dict[str, torch.Tensor] | None = None,
              widths: torch.Tensor | None = None, texture_checks: bool = False) -> Intervention:
    """Transplant each class's candidate features, image by image, onto other-class inputs.

    ``images`` (K, N, C, H, W): class-maximising images (sources); ``sources`` optionally gives other
    source images per candidate, (K, P, C, H, W) each (the context probe's); ``others`` (M, C, H, W)
    inputs with labels ``other_labels`` (M,); at most ``max_inputs`` of them are used (seeded
    subsample), split in two halves: one chooses each class's source image, the other measures it.
    ``widths`` (K, P) optionally gives each frame source its own width (default: ``ring`` for all).
    ``texture_checks``: also measure the chosen texture under each of :data:`TEXTURE_CHECKS`.
    """
    sources = {cand: (sources or {}).get(cand, images) for cand in CANDIDATES}
    k = images.shape[0]
    if widths is None:
        widths = torch.full(sources["frame"].shape[:2], ring, dtype=torch.long)
    widths = widths.cpu()
    pick = torch.randperm(others.shape[0], generator=generator)[:max_inputs]
    others, other_labels = others[pick.to(others.device)], other_labels[pick.cpu()]
    m = others.shape[0]
    half = torch.zeros(m, dtype=torch.bool)
    half[torch.randperm(m, generator=generator)[: m // 2]] = True          # True: choose, False: measure
    base_pred = _predict(model, others, batch)
    off_object = ~object_mask(model, others) if texture_checks else None    # (M, 1, H, W)
    checks = {name: np.zeros(k) for name in TEXTURE_CHECKS} if texture_checks else {}
    flip, mean_flip, source = {}, {}, {}
    control, texture_control, shift_control = np.zeros(k), np.zeros(k), np.zeros(k)
    frame_width = np.zeros(k, dtype=int)
    for cand in CANDIDATES:
        flip[cand], mean_flip[cand], source[cand] = np.zeros(k), np.zeros(k), np.zeros(k, dtype=int)
    for t in range(k):
        eligible = (other_labels != t) & (base_pred != t)                 # (M,)
        choose, measure = eligible & half, eligible & ~half

        for cand in CANDIDATES:
            h = _hits(model, cand, sources[cand][t], others, t, eligible, widths[t] if cand == "frame" else ring,
                      batch).float()                                                       # (N, M)
            best = int((h[:, choose].sum(1)).argmax())
            flip[cand][t] = float(h[best, measure].sum() / measure.sum().clamp(min=1))
            mean_flip[cand][t] = float(h.sum() / (eligible.sum().clamp(min=1) * h.shape[0]))
            source[cand][t] = best
        frame_width[t] = int(widths[t, source["frame"][t]])
        for name in (FRAME_CONTROL, FRAME_CONTROL + " further"):
            ctrl = _hits(model, name, sources["frame"][t, source["frame"][t]][None], others, t, eligible,
                         int(frame_width[t]), batch).float()[0]
            control[t] = max(control[t], float(ctrl[measure].sum() / measure.sum().clamp(min=1)))
        source_texture = sources["background texture"][t, source["background texture"][t]][None]
        for name, out in ((TEXTURE_CONTROL, texture_control), (TEXTURE_SHIFT_CONTROL, shift_control)):
            ctrl = _hits(model, name, source_texture, others, t, eligible, ring, batch).float()[0]
            out[t] = float(ctrl[measure].sum() / measure.sum().clamp(min=1))
        if not texture_checks:
            continue
        for name in (TEXTURE_TURN_CHECK, TEXTURE_HALF_CHECK):
            ctrl = _hits(model, name, source_texture, others, t, eligible, ring, batch).float()[0]
            checks[name][t] = float(ctrl[measure].sum() / measure.sum().clamp(min=1))
        stamped = (others + periodic_texture(source_texture) * off_object).clamp(0, 1)
        ctrl = ((_predict(model, stamped, batch) == t) & eligible).float()
        checks[TEXTURE_OFF_OBJECT_CHECK][t] = float(ctrl[measure].sum() / measure.sum().clamp(min=1))
    return Intervention(flip=flip, mean_flip=mean_flip, source=source, frame_control=control,
                        texture_control=texture_control, texture_shift_control=shift_control,
                        frame_width=frame_width, texture_checks=checks)


def _hits(model, cand: str, sources: torch.Tensor, inputs: torch.Tensor, t: int, eligible: torch.Tensor,
          ring: int | torch.Tensor, batch: int) -> torch.Tensor:
    """(S, M) bool: input m, stamped with source s's candidate, is an eligible input sent to class t.
    ``ring``: one frame width, or (S,) one per source."""
    s, m = sources.shape[0], inputs.shape[0]
    if isinstance(ring, torch.Tensor):
        ring = ring.repeat_interleave(m)
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
