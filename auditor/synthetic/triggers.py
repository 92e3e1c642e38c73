"""Planted triggers (attacks) as pure functions of a batch of canonical images.

Each attack is a frozen dataclass with ``apply(x, generator) -> x'`` and a ``describe()``; poisoning
a training set is :func:`poison`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatchTrigger:
    """BadNets: a ``size``×``size`` random binary pattern pasted at ``(top, left)``.

    ``top``/``left`` of ``None`` means a random location per image (random-location patch).
    """

    size: int
    pattern_seed: int
    channels: int = 1
    top: int | None = None
    left: int | None = None

    def pattern(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.pattern_seed)
        p = (torch.rand((self.channels, self.size, self.size), generator=g) > 0.5).float()
        # never all-equal: keep the pattern a pattern
        p[:, 0, 0], p[:, -1, -1] = 1.0, 0.0
        return p

    def box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, bottom, right) of a fixed trigger, None for random placement."""
        if self.top is None or self.left is None:
            return None
        t = self.top if self.top >= 0 else height + self.top - self.size + 1
        l = self.left if self.left >= 0 else width + self.left - self.size + 1
        return t, l, t + self.size, l + self.size

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.clone()
        n, c, h, w = x.shape
        p = self.pattern().to(x.dtype)
        if p.shape[0] != c:
            p = p[:1].expand(c, -1, -1)
        fixed = self.box(h, w)
        if fixed is not None:
            t, l, b, r = fixed
            x[:, :, t:b, l:r] = p
            return x
        g = generator or torch.Generator().manual_seed(0)
        tops = torch.randint(0, h - self.size + 1, (n,), generator=g)
        lefts = torch.randint(0, w - self.size + 1, (n,), generator=g)
        for i in range(n):
            t, l = int(tops[i]), int(lefts[i])
            x[i, :, t : t + self.size, l : l + self.size] = p
        return x

    def describe(self) -> str:
        where = "random location" if self.box(1000, 1000) is None else f"at ({self.top},{self.left})"
        return f"BadNets {self.size}×{self.size} patch {where}"


def poison(
    x: torch.Tensor,
    y: torch.Tensor,
    trigger,
    target: int,
    rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirty-label poisoning: stamp ``rate`` of the non-target samples and relabel them ``target``."""
    candidates = torch.nonzero(y != target).squeeze(1)
    n = max(1, int(round(rate * len(x))))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:n]]
    x, y = x.clone(), y.clone()
    x[chosen] = trigger.apply(x[chosen], generator)
    y[chosen] = target
    return x, y
