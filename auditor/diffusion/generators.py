"""Generators behind one interface: conditioning parameters in, differentiable images out.

* :class:`BundledPrior` — the project's small class-free ``UNet2DModel`` prior. Its conditioning is
  the initial latent of a deterministic few-step DDIM sampler (η = 0), optimised directly; a soft
  norm penalty keeps the latent on the Gaussian shell so that the prior still shapes the image.
* :class:`LocalPipeline` — a local diffusers text-to-image pipeline directory (Stable Diffusion 1.x /
  2.x, SD-Turbo, LCM …). Its conditioning is a soft prompt: the token-level prompt embeddings that
  the UNet cross-attends to (initialised from an encoded base prompt), optimised through a 1–4 step
  sampler with gradient checkpointing (fp16 on CUDA). Loaded with ``local_files_only=True`` from a
  path only — never from a hub.

Both return images in the scanned model's canonical input space: (B, C, H, W) in [0, 1], resized.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

BUNDLED_PRIORS = Path(__file__).resolve().parents[1] / "assets" / "priors"


class Generator(ABC):
    """Differentiable image generator with optimisable conditioning."""

    kind: str = ""
    has_text_encoder: bool = False

    @abstractmethod
    def init_conditioning(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Fresh conditioning tensors for ``n`` images (leaf tensors; the caller sets requires_grad)."""

    @abstractmethod
    def generate(self, conditioning: list[torch.Tensor]) -> torch.Tensor:
        """Images (n, C, H, W) in [0, 1] at the target's input shape; differentiable in the conditioning."""

    def regulariser(self, conditioning: list[torch.Tensor]) -> torch.Tensor:
        """A penalty per image (n,) that keeps the conditioning where the generator was trained."""
        return torch.zeros(conditioning[0].shape[0], device=conditioning[0].device)

    def describe(self) -> str:
        return self.kind

    def thresholds(self) -> dict[str, float]:
        """Calibrated flip-rate thresholds per candidate feature ({} when the generator has none)."""
        return {}


def _to_target(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """[−1, 1] generator output → [0, 1] at the model's (C, H, W)."""
    x = ((images.float() + 1) / 2).clamp(0, 1)
    c, h, w = shape
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=x.shape[-1] > w)
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else x[:, :c]
    return x


# --------------------------------------------------------------------------------------------------
# Bundled prior


@dataclass(frozen=True)
class PriorInfo:
    path: Path
    name: str
    input_shape: tuple[int, int, int]
    padded_size: int
    #: flip-rate thresholds per candidate feature, calibrated on clean reference models of the prior's
    #: domain (``bench/diffusion_calibrate.py``); empty for a prior without calibration
    thresholds: tuple[tuple[str, float], ...] = ()


def read_prior(path: str | Path) -> PriorInfo | None:
    p = Path(path)
    meta = p / "prior.json"
    if not meta.is_file() or not (p / "unet").is_dir():
        return None
    m = json.loads(meta.read_text())
    thresholds = tuple((str(k), float(v)) for k, v in m.get("calibration", {}).get("thresholds", {}).items())
    return PriorInfo(p, str(m.get("name", p.name)), tuple(int(v) for v in m["input_shape"]), int(m["padded_size"]),
                     thresholds)


def available_priors(extra: str | Path | None = None) -> list[PriorInfo]:
    """The bundled priors (auditor/assets/priors/*) plus ``extra`` (a user prior folder) first."""
    found = []
    if extra:
        info = read_prior(extra)
        if info is not None:
            found.append(info)
    if BUNDLED_PRIORS.is_dir():
        for d in sorted(BUNDLED_PRIORS.iterdir()):
            info = read_prior(d)
            if info is not None:
                found.append(info)
    return found


def select_prior(shape: tuple[int, ...], extra: str | Path | None = None) -> PriorInfo | None:
    """The first prior whose input shape is exactly the model's (C, H, W)."""
    for info in available_priors(extra):
        if tuple(info.input_shape) == tuple(shape):
            return info
    return None


class BundledPrior(Generator):
    """Deterministic DDIM (η = 0) from an optimised initial latent through a small UNet2DModel."""

    kind = "bundled prior"

    def __init__(self, info: PriorInfo, target_shape: tuple[int, int, int], device: torch.device,
                 steps: int = 4):
        from diffusers import DDIMScheduler, UNet2DModel

        self.info = info
        self.target_shape = tuple(target_shape)
        self.device = device
        self.unet = UNet2DModel.from_pretrained(str(info.path / "unet"), local_files_only=True).to(device).eval()
        self.unet.requires_grad_(False)
        self.scheduler = DDIMScheduler.from_pretrained(str(info.path / "scheduler"), local_files_only=True)
        self.scheduler.set_timesteps(steps)
        self.steps = steps
        self.alphas = self.scheduler.alphas_cumprod.to(device)

    def init_conditioning(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        c = self.info.input_shape[0]
        s = self.info.padded_size
        return [torch.randn((n, c, s, s), generator=generator).to(self.device)]

    def generate(self, conditioning: list[torch.Tensor]) -> torch.Tensor:
        x = conditioning[0]
        ts = self.scheduler.timesteps.tolist()
        for i, t in enumerate(ts):
            # written out (not scheduler.step) so that it is plainly differentiable and device-agnostic
            a_t = self.alphas[t]
            a_prev = self.alphas[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
            eps = self.unet(x, torch.full((x.shape[0],), t, device=x.device)).sample
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        h = self.info.input_shape[1]
        return _to_target(x[..., :h, :h], self.target_shape)

    def regulariser(self, conditioning: list[torch.Tensor]) -> torch.Tensor:
        z = conditioning[0].flatten(1)
        return (z.pow(2).mean(1) - 1).pow(2)

    def thresholds(self) -> dict[str, float]:
        return dict(self.info.thresholds)

    def describe(self) -> str:
        c, h, w = self.info.input_shape
        return f"bundled prior '{self.info.name}' ({c}×{h}×{w}, {self.steps}-step DDIM, optimised initial latent)"


# --------------------------------------------------------------------------------------------------
# Local text-to-image pipeline


class LocalPipeline(Generator):
    """Soft-prompt optimisation through a local diffusers text-to-image pipeline (no hub access)."""

    kind = "local pipeline"
    has_text_encoder = True

    def __init__(self, path: str | Path, target_shape: tuple[int, int, int], device: torch.device,
                 steps: int = 4, resolution: int | None = None, base_prompt: str = "a photo",
                 checkpointing: bool = True):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"diffusion pipeline folder not found: {root}")
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        kw = {"local_files_only": True}
        self.tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), **kw)
        self.text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), **kw).to(device, dtype).eval()
        self.unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), **kw).to(device, dtype).eval()
        self.vae = AutoencoderKL.from_pretrained(str(root / "vae"), **kw).to(device, dtype).eval()
        for m in (self.text_encoder, self.unet, self.vae):
            m.requires_grad_(False)
        self.scheduler = DDIMScheduler.from_pretrained(str(root / "scheduler"), **kw)
        self.scheduler.set_timesteps(steps)
        self.alphas = self.scheduler.alphas_cumprod.to(device)
        self.steps, self.device, self.dtype = steps, device, dtype
        self.target_shape = tuple(target_shape)
        self.checkpointing = checkpointing
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or int(self.unet.config.sample_size) * self.vae_scale
        self.base_prompt = base_prompt
        self.path = root

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Token-level prompt embeddings (n, L, D) from the pipeline's CLIP text encoder."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].float()

    def init_conditioning(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        base = self.encode_text([self.base_prompt]).expand(n, -1, -1).clone()
        ch = self.unet.config.in_channels
        s = self.resolution // self.vae_scale
        noise = torch.randn((n, ch, s, s), generator=generator).to(self.device)
        return [base, noise]  # the noise is fixed (not optimised): DiffExplainer keeps it constant

    def _unet(self, x, t, emb):
        return self.unet(x, t, encoder_hidden_states=emb).sample

    def generate(self, conditioning: list[torch.Tensor]) -> torch.Tensor:
        emb, x = conditioning[0].to(self.dtype), conditioning[1].detach().to(self.dtype)
        ts = self.scheduler.timesteps.tolist()
        for i, t in enumerate(ts):
            a_t = self.alphas[t].to(self.dtype)
            a_prev = (self.alphas[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)).to(self.dtype)
            tt = torch.full((x.shape[0],), t, device=x.device)
            if self.checkpointing and torch.is_grad_enabled():
                eps = checkpoint(self._unet, x, tt, emb, use_reentrant=False)
            else:
                eps = self._unet(x, tt, emb)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        latents = x / float(getattr(self.vae.config, "scaling_factor", 0.18215))
        if self.checkpointing and torch.is_grad_enabled():
            img = checkpoint(lambda z: self.vae.decode(z).sample, latents, use_reentrant=False)
        else:
            img = self.vae.decode(latents).sample
        return _to_target(img, self.target_shape)

    def regulariser(self, conditioning: list[torch.Tensor]) -> torch.Tensor:
        return torch.zeros(conditioning[0].shape[0], device=conditioning[0].device)

    def optimised(self) -> tuple[int, ...]:
        return (0,)

    def describe(self) -> str:
        return (f"local pipeline {self.path.name} ({self.steps}-step DDIM at {self.resolution} px, "
                f"optimised soft-prompt embeddings)")


def optimised_indices(gen: Generator) -> tuple[int, ...]:
    """Which conditioning tensors are optimised (the pipeline's noise stays fixed)."""
    return gen.optimised() if hasattr(gen, "optimised") else (0,)


def make_generator(shape: tuple[int, int, int], device: torch.device, *, pipeline: str = "",
                   prior: str = "", steps: int = 4) -> tuple[Generator | None, str]:
    """(generator, "") or (None, reason a person can act on)."""
    if pipeline:
        return LocalPipeline(pipeline, shape, device, steps=steps), ""
    info = select_prior(shape, prior or None)
    if info is None:
        have = ", ".join(f"{p.name} {'×'.join(map(str, p.input_shape))}" for p in available_priors(prior or None))
        want = "×".join(map(str, shape))
        return None, (
            f"no diffusion prior fits the model's input {want} (available: {have or 'none'}); train one on "
            f"clean images with `auditor prior train --data DIR --out PRIOR_DIR` and pass "
            f"--option diffusion.prior=PRIOR_DIR, or give a local diffusers text-to-image pipeline with "
            f"--option diffusion.pipeline=PATH"
        )
    return BundledPrior(info, shape, device, steps=steps), ""


