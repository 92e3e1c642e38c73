"""Helpers shared by the zoo builder and the benchmark runner (no detector logic here)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def content_hash(recipe: dict) -> str:
    """Stable hash of a JSON-able recipe (sorted keys): the cache key of a zoo member."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        rev = out.stdout.strip() or "no-commit"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def train_one_cycle(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 128,
                    max_lr: float = 1e-2, seed: int = 0, weight_decay: float = 1e-4, augment=None) -> nn.Module:
    """AdamW with a one-cycle schedule: reaches usable accuracy in few epochs (we train for time)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.25)
    return _fit(model, x, y, opt, sched, epochs=epochs, batch_size=batch_size, generator=g, augment=augment)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt, sched, *, epochs: int, batch_size: int,
         generator: torch.Generator, augment=None, label_smoothing: float = 0.0) -> nn.Module:
    """The shared minibatch loop: seeded shuffles, optional batch augmentation, one scheduler step per batch."""
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = order[i: i + batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, generator)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing).backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def random_shift(max_shift: int, pad_mode: str):
    """Batch augmentation: translate every image by up to ``max_shift`` px (pad, then crop at random)."""

    def augment(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = xb.shape
        padded = F.pad(xb, (max_shift,) * 4, mode=pad_mode)
        dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
        return torch.stack([padded[i, :, int(dy[i]): int(dy[i]) + h, int(dx[i]): int(dx[i]) + w] for i in range(n)])

    return augment


def train_foreign(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, training: dict, epochs: int,
                  batch_size: int, seed: int) -> nn.Module:
    """A second training recipe, unlike :func:`train_one_cycle` in every knob the zoo's detectors might
    have adapted to: optimiser (SGD + Nesterov or AdamW), warm-up + cosine schedule, label smoothing,
    weight decay and a random-shift augmentation applied *after* poisoning (as a real pipeline would).

    ``training`` is the member's recipe entry: ``optimizer`` ("sgd"|"adamw"), ``lr``, ``weight_decay``,
    ``label_smoothing``, ``shift`` (px) and ``pad`` ("constant"|"replicate")."""
    g = torch.Generator().manual_seed(seed)
    if training["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=training["lr"], momentum=0.9, nesterov=True,
                              weight_decay=training["weight_decay"])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=training["lr"], weight_decay=training["weight_decay"])
    per_epoch = (len(x) + batch_size - 1) // batch_size
    total, warmup = epochs * per_epoch, per_epoch
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warmup)),
    ], milestones=[warmup])
    augment = random_shift(training["shift"], training["pad"]) if training["shift"] else None
    return _fit(model, x, y, opt, sched, epochs=epochs, batch_size=batch_size, generator=g, augment=augment,
                label_smoothing=training["label_smoothing"])


def zoo_clean_models(zoo: Path, modalities: tuple[str, ...] = ("image", "points")):
    """Yield ``(id, module, InputSpec, held-out SampleData)`` for a zoo's scored clean members.

    Used by the calibration scripts on ``bench/zoo/reference`` (clean models with seeds disjoint from
    the benchmarked zoo). Modules come from the zoo's weight cache, i.e. the exact trained weights."""
    import numpy as np

    from auditor.spec import InputSpec
    from auditor.target import SampleData
    from bench.zoo import DOMAIN_SHAPE, build_module

    manifest = json.loads((zoo / "manifest.json").read_text())
    for row in manifest["members"]:
        modality = "points" if row["domain"] == "points" else "image"
        if row["trojaned"] or row["spurious"] or not row.get("scored", True) or modality not in modalities:
            continue
        weights = zoo / "cache" / content_hash(row["recipe"]) / "weights.pt"
        if not weights.exists():
            continue
        module = build_module(row["recipe"])
        module.load_state_dict(torch.load(weights, weights_only=True))
        module.eval()
        shape = tuple(DOMAIN_SHAPE[row["domain"]])
        spec = InputSpec("points", shape, layout="BN3") if modality == "points" else InputSpec("image", shape)
        held = np.load(zoo / "data" / f"{row['domain']}.npz")
        data = SampleData(torch.from_numpy(held["x"]).float(), torch.from_numpy(held["y"]).long())
        yield row["id"], module, spec, data
