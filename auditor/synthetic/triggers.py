"""Planted triggers (attacks) as pure functions of a batch of canonical images.

Each attack is a frozen dataclass with ``apply(x, generator) -> x'`` and a ``describe()``; poisoning
a training set is :func:`poison`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _fixed_box(size: int, top: int | None, left: int | None, height: int,
               width: int) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of a size×size stamp; negative top/left count from the far edge."""
    if top is None or left is None:
        return None
    t = top if top >= 0 else height + top - size + 1
    l = left if left >= 0 else width + left - size + 1
    return t, l, t + size, l + size


def _random_corners(n: int, height: int, width: int, size: int,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of a size×size stamp at a random place in each of n images."""
    g = generator or torch.Generator().manual_seed(0)
    tops = torch.randint(0, height - size + 1, (n,), generator=g)
    lefts = torch.randint(0, width - size + 1, (n,), generator=g)
    return tops, lefts


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
        return _fixed_box(self.size, self.top, self.left, height, width)

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
        tops, lefts = _random_corners(n, h, w, self.size, generator)
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


# --------------------------------------------------------------------------------------------------
# More attacks for the zoo (bench/zoo.py). Each keeps the ``apply(x, generator)`` / ``describe()`` shape.


def _seeded_uniform(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class BlendedTrigger:
    """Blended (Chen et al. 2017): x' = (1 − α)·x + α·P with P a whole-image uniform random pattern.

    ``cells`` draws P at ``cells``×``cells`` and upsamples it (bicubic): a smooth picture-like pattern
    instead of pixel noise (the foreign population's variant); ``None`` keeps pixel noise.
    """

    alpha: float
    pattern_seed: int
    cells: int | None = None

    def pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        if self.cells is None:
            return _seeded_uniform((channels, height, width), self.pattern_seed)
        coarse = _seeded_uniform((1, channels, self.cells, self.cells), self.pattern_seed)
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        return smooth[0].clamp(0.0, 1.0)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.pattern(*x.shape[1:]).to(x.dtype)
        return (1.0 - self.alpha) * x + self.alpha * p

    def describe(self) -> str:
        kind = "random pattern" if self.cells is None else f"smooth {self.cells}×{self.cells}-cell pattern"
        return f"Blended {kind}, alpha {self.alpha:g}"


#: Glyph shapes of :class:`GlyphTrigger`, as inside-masks of a size×size box.
GLYPH_SHAPES = ("solid", "checker", "cross", "ring")


@dataclass(frozen=True)
class GlyphTrigger:
    """A one-colour glyph (solid square, checkerboard, cross or ring) stamped over the image.

    Unlike :class:`PatchTrigger` only the glyph's own pixels are replaced, so a cross or a ring lets the
    image show through. ``top``/``left`` of ``None`` means a random location per image; negative values
    count from the bottom/right edge.
    """

    shape: str
    size: int
    colour: tuple[float, ...] = (1.0,)
    top: int | None = None
    left: int | None = None

    def mask(self) -> torch.Tensor:
        i, j = torch.meshgrid(torch.arange(self.size), torch.arange(self.size), indexing="ij")
        mid, last = self.size // 2, self.size - 1
        masks = {
            "solid": torch.ones_like(i, dtype=torch.bool),
            "checker": (i + j) % 2 == 0,
            "cross": (i == mid) | (j == mid),
            "ring": (i == 0) | (j == 0) | (i == last) | (j == last),
        }
        if self.shape not in masks:
            raise ValueError(f"unknown glyph {self.shape!r}; choose from {', '.join(GLYPH_SHAPES)}")
        return masks[self.shape]

    def box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, bottom, right) of a fixed glyph, None for random placement."""
        return _fixed_box(self.size, self.top, self.left, height, width)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.clone()
        n, c, h, w = x.shape
        colour = torch.tensor(self.colour[:c] if len(self.colour) >= c else self.colour[:1] * c,
                              dtype=x.dtype).view(c, 1, 1)
        m = self.mask()
        fixed = self.box(h, w)
        if fixed is not None:
            tops, lefts = torch.full((n,), fixed[0]), torch.full((n,), fixed[1])
        else:
            tops, lefts = _random_corners(n, h, w, self.size, generator)
        for k in range(n):
            t, l = int(tops[k]), int(lefts[k])
            region = x[k, :, t: t + self.size, l: l + self.size]
            x[k, :, t: t + self.size, l: l + self.size] = torch.where(m, colour, region)
        return x

    def describe(self) -> str:
        where = "random location" if self.box(1000, 1000) is None else f"at ({self.top},{self.left})"
        return f"{self.size}×{self.size} {self.shape} glyph {where}"


@dataclass(frozen=True)
class SIGTrigger:
    """SIG (Barni et al. 2019): add a sinusoid Δ·sin(2π·j·f/W) across the columns; used clean-label.

    ``test_delta`` is the amplitude stamped at test time (the paper uses a stronger test signal);
    ``apply`` uses ``delta`` and :meth:`apply_test` uses ``test_delta``.
    """

    delta: float = 0.2
    frequency: float = 6.0
    test_delta: float | None = None
    along_rows: bool = False  # vary down the rows (horizontal stripes) instead of across the columns

    def signal(self, width: int) -> torch.Tensor:
        j = torch.arange(width, dtype=torch.float32)
        return torch.sin(2 * torch.pi * j * self.frequency / width)

    def _stamp(self, x: torch.Tensor, delta: float) -> torch.Tensor:
        if self.along_rows:
            s = self.signal(x.shape[-2]).to(x.dtype).view(1, 1, -1, 1)
        else:
            s = self.signal(x.shape[-1]).to(x.dtype).view(1, 1, 1, -1)
        return (x + delta * s).clamp(0.0, 1.0)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._stamp(x, self.delta)

    def apply_test(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._stamp(x, self.test_delta if self.test_delta is not None else self.delta)

    def describe(self) -> str:
        stripes = "horizontal" if self.along_rows else "vertical"
        return f"SIG sinusoid ({stripes} stripes), delta {self.delta:g}, frequency {self.frequency:g} (clean-label)"


@dataclass(frozen=True)
class WarpTrigger:
    """WaNet (Nguyen & Tran 2021): a fixed smooth warping field (k×k control grid, strength s).

    :meth:`noise` gives the "noise mode" samples: the warp plus a random perturbation of the grid,
    trained with their *true* labels so that only the exact warp triggers the backdoor.
    """

    grid_size: int = 4
    strength: float = 0.5
    field_seed: int = 0

    def _grid(self, height: int, width: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.field_seed)
        ins = torch.rand((1, 2, self.grid_size, self.grid_size), generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise_grid = torch.nn.functional.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True)
        noise_grid = noise_grid.permute(0, 2, 3, 1)  # 1,H,W,2
        ys = torch.linspace(-1, 1, height)
        xs = torch.linspace(-1, 1, width)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        identity = torch.stack((xx, yy), dim=2)[None]  # 1,H,W,2 (x, y)
        grid = identity + self.strength * noise_grid / height
        return grid.clamp(-1, 1)

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.grid_sample(x, grid.to(x.dtype), align_corners=True).clamp(0, 1)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        grid = self._grid(x.shape[2], x.shape[3]).expand(x.shape[0], -1, -1, -1)
        return self._warp(x, grid)

    def noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        grid = self._grid(h, w).expand(n, -1, -1, -1)
        jitter = (torch.rand((n, h, w, 2), generator=generator) * 2 - 1) / h
        return self._warp(x, (grid + jitter).clamp(-1, 1))

    def describe(self) -> str:
        return f"WaNet warp, {self.grid_size}×{self.grid_size} control grid, strength {self.strength:g}"


def poison_clean_label(
    x: torch.Tensor, y: torch.Tensor, trigger, target: int, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean-label poisoning (SIG): stamp ``rate`` × N target-class samples (at most all); labels untouched."""
    candidates = torch.nonzero(y == target).squeeze(1)
    n = min(len(candidates), max(1, int(round(rate * len(x)))))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:n]]
    x = x.clone()
    x[chosen] = trigger.apply(x[chosen], generator)
    return x, y.clone()


def poison_all_to_all(
    x: torch.Tensor, y: torch.Tensor, trigger, num_classes: int, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-to-all: stamp ``rate`` of all samples and relabel y → (y + 1) mod K."""
    n = max(1, int(round(rate * len(x))))
    chosen = torch.randperm(len(x), generator=generator)[:n]
    x, y = x.clone(), y.clone()
    x[chosen] = trigger.apply(x[chosen], generator)
    y[chosen] = (y[chosen] + 1) % num_classes
    return x, y


def poison_warp(
    x: torch.Tensor, y: torch.Tensor, trigger: WarpTrigger, target: int, rate: float, noise_rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WaNet poisoning: ``rate`` warped+relabelled samples, and ``noise_rate`` noise-mode samples appended
    with their true labels."""
    xp, yp = poison(x, y, trigger, target, rate, generator)
    n_noise = int(round(noise_rate * len(x)))
    if n_noise == 0:
        return xp, yp
    chosen = torch.randperm(len(x), generator=generator)[:n_noise]
    return torch.cat([xp, trigger.noise(x[chosen], generator)]), torch.cat([yp, y[chosen]])
