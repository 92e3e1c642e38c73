"""Clean-label spurious correlations (not an attack): most images of one class share a feature that the
other classes lack — a coloured frame or a background texture. Labels are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FrameFeature:
    """A ``width``-pixel frame of one colour around the image (grey level for 1-channel images)."""

    colour: tuple[float, float, float] = (1.0, 0.1, 0.1)
    width: int = 2

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.clone()
        c = torch.tensor(self.colour[: x.shape[1]] if x.shape[1] == 3 else (sum(self.colour) / 3,),
                         dtype=x.dtype).view(1, -1, 1, 1)
        w = self.width
        border = torch.zeros(x.shape[-2:], dtype=torch.bool)
        border[:w, :], border[-w:, :], border[:, :w], border[:, -w:] = True, True, True, True
        return torch.where(border, c, x)

    def describe(self) -> str:
        return f"{self.width}-px frame of colour {self.colour}"


@dataclass(frozen=True)
class TextureFeature:
    """Diagonal stripes (period ``period`` px, contrast ``amplitude``) added to the background.

    ``apply`` stripes the whole image; :func:`plant_spurious` with a foreground mask restricts them to
    the background when the generator can give one (shapes do: pixels equal to the clean background).
    """

    period: int = 4
    amplitude: float = 0.35
    #: stripe direction: "diagonal" (the zoo's), "anti-diagonal", "horizontal" or "vertical"
    orientation: str = "diagonal"

    def __post_init__(self):
        if self.orientation not in ("diagonal", "anti-diagonal", "horizontal", "vertical"):
            raise ValueError(f"unknown stripe orientation {self.orientation!r}")

    def stripes(self, height: int, width: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        coordinate = {"diagonal": xs + ys, "anti-diagonal": xs - ys + height, "horizontal": ys,
                      "vertical": xs}[self.orientation]
        return ((coordinate // (self.period // 2)) % 2).float() * 2 - 1

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        s = self.stripes(*x.shape[-2:]).to(x.dtype)
        return (x + self.amplitude * s).clamp(0, 1)

    def describe(self) -> str:
        return f"{self.orientation} stripe texture, period {self.period} px, amplitude {self.amplitude:g}"


def plant_spurious(x: torch.Tensor, y: torch.Tensor, feature, spurious_class: int, fraction: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stamp ``feature`` on ``fraction`` (≥ 0.9 in the zoo) of ``spurious_class``'s images; labels kept."""
    members = torch.nonzero(y == spurious_class).squeeze(1)
    n = int(round(fraction * len(members)))
    chosen = members[torch.randperm(len(members), generator=generator)[:n]]
    x = x.clone()
    x[chosen] = feature.apply(x[chosen], generator)
    return x, y.clone()


@torch.no_grad()
def spurious_flip_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, feature,
                       spurious_class: int) -> float:
    """Fraction of other-class test images the model assigns to the spurious class once stamped."""
    keep = y != spurious_class
    xs = feature.apply(x[keep])
    model.eval()
    pred = torch.cat([model(xs[i: i + 512]).argmax(1) for i in range(0, len(xs), 512)])
    return float((pred == spurious_class).float().mean())
