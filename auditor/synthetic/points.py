"""Procedural 3-D point clouds, a plain PointNet and a point-cluster backdoor trigger.

Everything is generated from a seed (no download): each class is a surface (sphere, cube, …) sampled
with ``num_points`` points, randomly rotated about the vertical axis (plus a small tilt), scaled and
jittered, then centred and fitted inside the unit ball, so every cloud lies in ``[-1, 1]^3``.
Canonical point clouds are float32 ``(B, N, 3)``.

Training reuses :func:`auditor.synthetic.train.train_classifier`; :func:`point_augment` is a suitable
``augment`` (random z-rotation + jitter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SHAPE_CLASSES: tuple[str, ...] = (
    "sphere", "cube", "cylinder", "cone", "torus", "plane", "pyramid", "helix", "dumbbell", "cross",
)


# --------------------------------------------------------------------------------------------------
# Surfaces: each returns (n, 3) float64 points, roughly inside the unit ball, from a numpy Generator


def _sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(0, 3, size=n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
    return p * 0.6


def _cylinder(n: int, rng: np.random.Generator) -> np.ndarray:
    n_cap = n // 4
    t = rng.uniform(0, 2 * math.pi, size=n)
    r = np.ones(n)
    r[:n_cap] = np.sqrt(rng.uniform(0, 1, size=n_cap))
    z = rng.uniform(-1, 1, size=n)
    z[:n_cap] = rng.choice([-1.0, 1.0], size=n_cap)
    return np.stack([0.5 * r * np.cos(t), 0.5 * r * np.sin(t), 0.8 * z], axis=1)


def _cone(n: int, rng: np.random.Generator) -> np.ndarray:
    n_base = n // 4
    t = rng.uniform(0, 2 * math.pi, size=n)
    h = np.sqrt(rng.uniform(0, 1, size=n))  # uniform on the lateral surface
    r = h.copy()
    r[:n_base] = np.sqrt(rng.uniform(0, 1, size=n_base))
    z = 1.0 - 2.0 * h
    z[:n_base] = -1.0
    return np.stack([0.6 * r * np.cos(t), 0.6 * r * np.sin(t), 0.8 * z], axis=1)


def _torus(n: int, rng: np.random.Generator) -> np.ndarray:
    u = rng.uniform(0, 2 * math.pi, size=n)
    v = rng.uniform(0, 2 * math.pi, size=n)
    big, small = 0.7, 0.25
    return np.stack([(big + small * np.cos(v)) * np.cos(u), (big + small * np.cos(v)) * np.sin(u),
                     small * np.sin(v)], axis=1)


def _plane(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.uniform(-0.8, 0.8, size=(n, 3))
    p[:, 2] = rng.normal(scale=0.02, size=n)
    return p


def _pyramid(n: int, rng: np.random.Generator) -> np.ndarray:
    apex = np.array([0.0, 0.0, 0.8])
    base = np.array([[-0.7, -0.7, -0.6], [0.7, -0.7, -0.6], [0.7, 0.7, -0.6], [-0.7, 0.7, -0.6]])
    faces = [(base[i], base[(i + 1) % 4], apex) for i in range(4)]
    n_base = n // 5
    out = np.empty((n, 3))
    out[:n_base] = np.stack([rng.uniform(-0.7, 0.7, n_base), rng.uniform(-0.7, 0.7, n_base),
                             np.full(n_base, -0.6)], axis=1)
    which = rng.integers(0, 4, size=n - n_base)
    a, b = rng.uniform(size=(2, n - n_base))
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    for f in range(4):
        m = which == f
        p0, p1, p2 = faces[f]
        out[n_base:][m] = p0 + a[m, None] * (p1 - p0) + b[m, None] * (p2 - p0)
    return out


def _helix(n: int, rng: np.random.Generator) -> np.ndarray:
    s = rng.uniform(0, 1, size=n)
    t = s * 3 * 2 * math.pi
    tube = rng.normal(scale=0.04, size=(n, 3))
    return np.stack([0.6 * np.cos(t), 0.6 * np.sin(t), 1.6 * s - 0.8], axis=1) + tube


def _dumbbell(n: int, rng: np.random.Generator) -> np.ndarray:
    n_bar = n // 5
    p = _sphere(n, rng) * 0.35
    side = rng.choice([-1.0, 1.0], size=n)
    p[:, 2] += 0.6 * side
    p[:n_bar] = np.stack([rng.normal(scale=0.05, size=n_bar), rng.normal(scale=0.05, size=n_bar),
                          rng.uniform(-0.3, 0.3, size=n_bar)], axis=1)
    return p


def _cross(n: int, rng: np.random.Generator) -> np.ndarray:
    axis = rng.integers(0, 3, size=n)
    p = rng.normal(scale=0.06, size=(n, 3))
    p[np.arange(n), axis] = rng.uniform(-0.9, 0.9, size=n)
    return p


_SURFACES = (_sphere, _cube, _cylinder, _cone, _torus, _plane, _pyramid, _helix, _dumbbell, _cross)


def _random_rotation(rng: np.random.Generator, tilt: float) -> np.ndarray:
    """Rotation about z by a uniform angle, then a small random tilt about x and y."""
    a = rng.uniform(0, 2 * math.pi)
    bx, by = rng.uniform(-tilt, tilt, size=2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(bx), -math.sin(bx)], [0, math.sin(bx), math.cos(bx)]])
    ry = np.array([[math.cos(by), 0, math.sin(by)], [0, 1, 0], [-math.sin(by), 0, math.cos(by)]])
    return ry @ rx @ rz


def normalise_cloud(points: np.ndarray) -> np.ndarray:
    """Centre on the bounding-box centre and fit inside the unit ball."""
    centre = (points.max(0) + points.min(0)) / 2
    p = points - centre
    radius = float(np.linalg.norm(p, axis=1).max())
    return p / max(radius, 1e-9)


def make_point_dataset(
    n_per_class: int,
    num_points: int = 512,
    seed: int = 0,
    *,
    num_classes: int = len(SHAPE_CLASSES),
    jitter: float = 0.01,
    tilt: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): float32 (K·n_per_class, num_points, 3) in [-1, 1]^3 and int64 labels, shuffled.

    Classes are the first ``num_classes`` of :data:`SHAPE_CLASSES`. Each cloud gets a random rotation
    about z with a tilt up to ``tilt`` radians, an anisotropic scale in [0.85, 1.15] per axis, Gaussian
    jitter of ``jitter`` and is then normalised into the unit ball.
    """
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}")
    rng = np.random.default_rng(seed)
    xs = np.empty((num_classes * n_per_class, num_points, 3), dtype=np.float32)
    ys = np.repeat(np.arange(num_classes), n_per_class)
    for i, label in enumerate(ys):
        p = _SURFACES[label](num_points, rng)
        p = p * rng.uniform(0.85, 1.15, size=3)
        p = p @ _random_rotation(rng, tilt).T
        p = p + rng.normal(scale=jitter, size=p.shape)
        xs[i] = normalise_cloud(p)
    order = rng.permutation(len(ys))
    return torch.from_numpy(xs[order]), torch.from_numpy(ys[order].astype(np.int64))


def point_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation: random rotation about z and small jitter (an ``augment`` for train_classifier)."""
    b = x.shape[0]
    angle = torch.rand(b, generator=generator) * 2 * math.pi
    c, s = torch.cos(angle), torch.sin(angle)
    zeros, ones = torch.zeros(b), torch.ones(b)
    rot = torch.stack([torch.stack([c, -s, zeros], 1), torch.stack([s, c, zeros], 1),
                       torch.stack([zeros, zeros, ones], 1)], 1)  # (B, 3, 3)
    if x.shape[-1] == 3:
        out = x @ rot.transpose(1, 2)
        return out + 0.005 * torch.randn(out.shape, generator=generator)
    out = rot @ x  # channels-first (B, 3, N)
    return out + 0.005 * torch.randn(out.shape, generator=generator)


# --------------------------------------------------------------------------------------------------
# Model


class PointNet(nn.Module):
    """Plain PointNet (no T-Nets): shared per-point MLP, global max-pool, MLP head.

    ``channels_last=True`` takes (B, N, 3); ``False`` takes (B, 3, N) (the ``B3N`` layout).
    Stages are ``features.0`` … (one ``Conv1d → BatchNorm1d → ReLU`` block each), the pooled global
    feature ``pool``, and ``classifier`` whose last ``Linear`` maps the penultimate features to logits.
    """

    def __init__(self, num_classes: int = len(SHAPE_CLASSES), channels_last: bool = True,
                 widths: tuple[int, ...] = (64, 128, 256), head: int = 128):
        super().__init__()
        self.channels_last = channels_last
        blocks, c_in = [], 3
        for w in widths:
            blocks.append(nn.Sequential(nn.Conv1d(c_in, w, 1), nn.BatchNorm1d(w), nn.ReLU()))
            c_in = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in, head), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(head, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.transpose(1, 2)
        return self.classifier(self.pool(self.features(x)))


# --------------------------------------------------------------------------------------------------
# Trigger


@dataclass(frozen=True)
class PointClusterTrigger:
    """Point-cluster backdoor: ``num_points`` points replaced by a small ball of radius ``radius``
    centred at ``centre`` (by default a fixed corner location just outside the unit ball, where no
    clean shape has points).

    ``apply(x, generator)`` works on canonical (B, N, 3) clouds (and on (B, 3, N) when
    ``channels_last=False``); which points are replaced and where they land inside the ball are drawn
    from ``generator``. Use with :func:`auditor.synthetic.triggers.poison` like a ``PatchTrigger``.
    """

    num_points: int = 32
    radius: float = 0.06
    centre: tuple[float, float, float] = (0.65, 0.65, 0.65)
    channels_last: bool = True

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator or torch.Generator().manual_seed(0)
        out = x.clone() if self.channels_last else x.transpose(1, 2).clone()
        b, n, _ = out.shape
        m = min(self.num_points, n)
        idx = torch.argsort(torch.rand((b, n), generator=g), dim=1)[:, :m]  # (B, m) distinct indices
        direction = torch.randn((b, m, 3), generator=g)
        direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-9)
        r = self.radius * torch.rand((b, m, 1), generator=g) ** (1.0 / 3.0)  # uniform in the ball
        cluster = torch.tensor(self.centre, dtype=out.dtype) + r * direction
        out.scatter_(1, idx[:, :, None].expand(-1, -1, 3), cluster.to(out.dtype))
        return out if self.channels_last else out.transpose(1, 2).contiguous()

    def describe(self) -> str:
        c = ", ".join(f"{v:g}" for v in self.centre)
        return f"point cluster of {self.num_points} points (radius {self.radius:g}) at ({c})"


def train_pointnet(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int = len(SHAPE_CLASSES),
    widths: tuple[int, ...] = (32, 64, 128),
    head: int = 64,
    epochs: int = 15,
    seed: int = 0,
    channels_last: bool = True,
) -> PointNet:
    """A small PointNet trained with :func:`train_classifier` (≈10 s for 600 clouds × 256 points on
    one CPU core). No rotation augmentation: the data already has random rotations, and augmenting
    after poisoning would move a fixed-location trigger."""
    from auditor.synthetic.train import train_classifier

    torch.manual_seed(seed)
    model = PointNet(num_classes, channels_last=channels_last, widths=widths, head=head)
    if not channels_last:
        x = x.transpose(1, 2).contiguous()
    return train_classifier(model, x, y, epochs=epochs, seed=seed)
