"""A small unconditional diffusion prior (``diffusers.UNet2DModel``) trained on clean images.

``train_prior(images, out_dir, *, steps, resume=True, progress=None)`` is what ``auditor prior train
--data DIR`` calls. It is CPU-feasible for images ≤ 64 px: a tiny UNet (two resolution levels, few
channels, no attention; well under 10 MB of weights), epsilon-prediction DDPM loss with 1000 training
timesteps. A checkpoint is written every ``checkpoint_every`` steps, so an interrupted run resumes
where it stopped (``resume=True``). The saved folder holds ``unet/`` (``save_pretrained``),
``scheduler/`` and ``prior.json`` (input shape, steps done, data statistics) — the bundled prior
loader selects a prior by that input shape.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

PRIOR_META = "prior.json"
TRAIN_STATE = "train_state.pt"


def make_unet(channels: int, size: int, width: int = 16):
    """A tiny UNet2DModel: (width, 2·width) channels, one ResNet layer per block, no attention."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels,
        block_out_channels=(width, 2 * width, 2 * width), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8, time_embedding_type="positional",
    )


#: share of training images that get a random frame or texture (half each), see :func:`add_context`
CONTEXT_SHARE = 0.4


def add_context(x: torch.Tensor, generator: torch.Generator, share: float) -> torch.Tensor:
    """Give ``share`` of the images ``x`` (B, C, H, W) in [0, 1] one random context variation, half a
    frame and half a texture: a frame 1 to H/8 px wide of a uniformly random colour, or stripes
    (period 2–8 px; horizontal, vertical or either diagonal; random phase; contrast 0.1–0.4; plain
    stripes or a checkerboard) over the whole image. The parameters are drawn from wide ranges, not
    from any particular classifier's feature, so the prior can render a family, not one instance."""
    b, c, h, w = x.shape
    u = torch.rand(b, generator=generator)
    framed, textured = u < share / 2, (u >= share / 2) & (u < share)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    depth = torch.minimum(torch.minimum(ys, xs), torch.minimum(h - 1 - ys, w - 1 - xs))      # (H, W)
    width = torch.randint(1, max(2, h // 8) + 1, (b,), generator=generator)
    colour = torch.rand((b, c, 1, 1), generator=generator)
    ring = (depth[None] < width[:, None, None]) & framed[:, None, None]                      # (B, H, W)
    x = torch.where(ring[:, None], colour, x)
    period = torch.randint(2, 9, (b,), generator=generator).float()
    coord = torch.stack([xs, ys, xs + ys, xs - ys]).float()                                   # (4, H, W)
    along = coord[torch.randint(0, 4, (b,), generator=generator)]                           # (B, H, W)
    across = coord[torch.randint(0, 4, (b,), generator=generator)]
    phase = torch.rand(b, generator=generator)[:, None, None]
    wave = torch.floor(along / period[:, None, None] * 2 + 2 * phase) % 2 * 2 - 1           # ±1 stripes
    checker = torch.rand(b, generator=generator)[:, None, None] < 0.3
    wave = torch.where(checker, wave * (torch.floor(across / period[:, None, None] * 2) % 2 * 2 - 1), wave)
    amplitude = (0.1 + 0.3 * torch.rand(b, generator=generator)) * textured.float()
    return (x + amplitude[:, None, None, None] * wave[:, None]).clamp(0, 1)


def padded_size(size: int) -> int:
    """The UNet halves resolution twice: work at a multiple of 4 (28 → 28, 30 → 32)."""
    return int(math.ceil(size / 4) * 4)


def train_prior(
    images: torch.Tensor,
    out_dir: str | Path,
    *,
    steps: int,
    resume: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    width: int = 16,
    seed: int = 0,
    checkpoint_every: int = 250,
    name: str = "",
    context_share: float = CONTEXT_SHARE,
) -> Path:
    """Train (or resume training) a prior on ``images`` (N, C, H, W) float in [0, 1], H = W ≤ 64.

    ``context_share`` of the training images get a random context variation (:func:`add_context`):
    a prior only renders what it has seen, and a bias probe needs one that can draw frames and
    textures when the classifier rewards them, though the clean images have none.
    ``progress(step, steps, loss)`` is called every 10 steps (the CLI draws a bar from it).
    Returns ``out_dir``. Deterministic for a given seed and thread count.
    """
    from diffusers import DDPMScheduler

    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"expected square images (N, C, H, W), got {tuple(images.shape)}")
    n, c, h, _ = images.shape
    if h > 64:
        raise ValueError(f"priors are meant for images ≤ 64 px (CPU training); got {h} px — resize first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = padded_size(h)
    unet = make_unet(c, size, width)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    done = 0
    state_path = out / TRAIN_STATE
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"])
        done = int(state["step"])
    data = (images.float().clamp(0, 1) * 2 - 1)
    if size != h:  # pad with the background value of the data (its border median)
        data = F.pad(data, (0, size - h, 0, size - h), value=float(data[..., 0, :].median()))
    sched_lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))
    for _ in range(done):
        sched_lr.step()
    unet.train()
    loss_ema = float("nan")
    started = time.monotonic()
    for step in range(done, steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x0 = data[idx]
        if context_share > 0:
            x0 = add_context((x0 + 1) / 2, g, context_share) * 2 - 1
        if torch.rand((), generator=g) < 0.5 and c == 3:  # flips keep shapes/objects plausible
            x0 = x0.flip(-1)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        xt = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched_lr.step()
        value = float(loss.detach())
        loss_ema = value if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * value
        if progress is not None and ((step + 1) % 10 == 0 or step == steps - 1):
            progress(step + 1, steps, loss_ema)
        if (step + 1) % checkpoint_every == 0 or step == steps - 1:
            torch.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(),
                        "step": step + 1}, state_path)
            _save(unet, scheduler, out, c, h, size, step + 1, loss_ema, name, time.monotonic() - started,
                  context_share)
    return out


def _save(unet, scheduler, out: Path, channels: int, size: int, padded: int, steps_done: int,
          loss: float, name: str, seconds: float, context_share: float) -> None:
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    meta = {"name": name or out.name, "input_shape": [channels, size, size], "padded_size": padded,
            "steps_done": steps_done, "context_share": context_share, "final_loss_ema": loss, "train_seconds_last_session": round(seconds, 1),
            "format": "auditor.prior/1"}
    (out / PRIOR_META).write_text(json.dumps(meta, indent=1))


def drop_training_state(out_dir: str | Path) -> None:
    """Remove the resumable optimiser state (not needed to use the prior; keeps bundles small)."""
    p = Path(out_dir) / TRAIN_STATE
    if p.exists():
        p.unlink()


def load_prior(prior_dir: str | Path):
    """(unet, scheduler, meta) of a saved prior; the UNet is in eval mode with frozen weights."""
    from diffusers import DDPMScheduler, UNet2DModel

    d = Path(prior_dir)
    meta = json.loads((d / PRIOR_META).read_text())
    unet = UNet2DModel.from_pretrained(d / "unet", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(d / "scheduler", local_files_only=True)
    unet.eval().requires_grad_(False)
    return unet, scheduler, meta
