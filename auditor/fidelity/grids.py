"""DiFull and DiPart harnesses around the user's own model (Rao, Böhle, Schiele, CVPR 2022).

An n×n grid of inputs is fed to a harness with one *head* per cell:

* **DiFull** — every cell is cropped and run through the whole model on its own, so head k's output
  provably depends on cell k only. Attribution outside cell k is a localisation error of the method.
* **DiPart** — the whole grid runs through the feature extractor (receptive fields may cross cells);
  at the last spatial block the feature map is cropped to the block over cell k and the rest of the
  model (the head) sees only that block.

Attribution at an inner layer needs the layer's activations laid out *as a grid* (Grad-CAM averages
gradients over the whole map, which is exactly why it leaks on DiFull). The harness therefore routes
each chosen layer's output through an ``nn.Identity`` "point" holding the grid-shaped tensor; Captum's
layer methods hook those points. Hooks live only inside :meth:`GridHarness.attached`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from auditor.fidelity.layers import LayerChoice


class _StopProbe(Exception):
    pass


class GridUnsupported(RuntimeError):
    """The model cannot be put into this harness (the reason is reported, the setting skipped)."""


def split_cells(grid: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, n·H, n·W) → (B·n², C, H, W), cell k = row·n + col, batch-major."""
    b, c, hh, ww = grid.shape
    h, w = hh // n, ww // n
    cells = grid.reshape(b, c, n, h, n, w).permute(0, 2, 4, 1, 3, 5)
    return cells.reshape(b * n * n, c, h, w)


def assemble_cells(cells: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`split_cells`."""
    bk, c, h, w = cells.shape
    b = bk // (n * n)
    grid = cells.reshape(b, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, n * h, n * w)


def cell_box(k: int, n: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of cell k in a grid of total size height × width."""
    h, w = height // n, width // n
    r, c = divmod(k, n)
    return r * h, c * w, (r + 1) * h, (c + 1) * w


class GridHarness(nn.Module):
    """n×n grid → logits of each head. ``mode`` is ``"full"`` (DiFull) or ``"part"`` (DiPart).

    With ``n == 1`` a DiFull harness is the plain model with hookable points (used for randomisation
    and triggered inputs).
    """

    def __init__(self, model: nn.Module, mode: str, n: int, layers: Sequence[LayerChoice]):
        super().__init__()
        if mode not in ("full", "part"):
            raise ValueError(f"mode must be 'full' or 'part', not {mode!r}")
        self.model = model
        self.mode = mode
        self.n = n
        self.layers = tuple(layers)
        self.points = nn.ModuleDict({layer.role: nn.Identity() for layer in self.layers})
        self._head: int | None = None
        self._lean_head: int | None = None
        # lean DiFull: compute only the attributed head's cell. Exact for every method whose map outside
        # cell k is (gradient w.r.t. that position) × something — the gradient there is provably zero —
        # but not for Grad-CAM, which spreads channel weights over the activations of *all* cells.
        self.lean = False
        self._hooks: list = []
        inner = [layer for layer in self.layers if layer.name]
        self._split = inner[-1] if inner else None
        if mode == "part" and (self._split is None or self._split.role != "last"):
            raise GridUnsupported("DiPart needs a spatial last block to split the model into backbone and head")

    def point(self, role: str) -> nn.Module:
        return self.points[role]

    @contextmanager
    def attached(self) -> Iterator[GridHarness]:
        """Hooks on the model's chosen layers, removed on exit (also after an exception)."""
        by_module: dict[str, list[LayerChoice]] = {}
        for layer in self.layers:
            if layer.name:
                by_module.setdefault(layer.name, []).append(layer)
        try:
            for name, roles in by_module.items():
                module = dict(self.model.named_modules())[name]  # names may contain dots
                self._hooks.append(module.register_forward_hook(self._make_hook(roles)))
            yield self
        finally:
            for h in self._hooks:
                h.remove()
            self._hooks.clear()

    def _make_hook(self, roles: list[LayerChoice]):
        crop_here = self.mode == "part" and any(r.name == self._split.name for r in roles)

        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                return None
            if self.mode == "full":
                k, n = self._lean_head, self.n
                if k is not None:  # only cell k was computed: the other cells are zeros at the point
                    zeros = torch.zeros_like(output)
                    output = torch.stack([output if j == k else zeros for j in range(n * n)], 1).flatten(0, 1)
                grid = assemble_cells(output, n)
                for r in roles:
                    grid = self.points[r.role](grid)
                cells = split_cells(grid, n)
                if k is not None:
                    cells = cells.reshape(-1, n * n, *cells.shape[1:])[:, k]
                return cells
            for r in roles:
                output = self.points[r.role](output)
            if crop_here:
                output = self._crop(output)
            return output

        return hook

    def _crop(self, features: torch.Tensor) -> torch.Tensor:
        n = self.n
        h, w = features.shape[2] // n, features.shape[3] // n
        if self._head is None:
            # all heads from one backbone pass: the head part sees n²·B blocks, head-major
            blocks = [features[:, :, (k // n) * h:(k // n + 1) * h, (k % n) * w:(k % n + 1) * w]
                      for k in range(n * n)]
            return torch.cat(blocks)
        r, c = divmod(self._head, n)
        return features[:, :, r * h:(r + 1) * h, c * w:(c + 1) * w]

    def forward(self, grid: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """Logits (B, K) of ``head``, or (B, n², K) of every head when ``head`` is None."""
        n = self.n
        x = self.points["input"](grid) if "input" in self.points else grid
        b = x.shape[0]
        if self.mode == "full":
            cells = split_cells(x, n)
            if head is not None and self.lean:
                self._lean_head = head
                try:
                    return self.model(cells.reshape(b, n * n, *cells.shape[1:])[:, head])
                finally:
                    self._lean_head = None
            logits = self.model(cells).reshape(b, n * n, -1)
            return logits if head is None else logits[:, head]
        self._head = head
        try:
            if head is None:
                logits = self.model(x)
                return logits.reshape(n * n, b, -1).transpose(0, 1)
            return self.model(x)
        finally:
            self._head = None


class AllHeads(nn.Module):
    """Every head's logit of its own class at once: grid (B, C, nH, nW) → (B, n²).

    For perturbation methods (Occlusion), whose Captum implementation attributes every output element
    separately, so one pass over the perturbations serves all heads.
    """

    def __init__(self, harness: GridHarness, classes: torch.Tensor):
        super().__init__()
        self.harness = harness
        self.register_buffer("classes", classes, persistent=False)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        logits = self.harness(grid)  # (B, n², K)
        reps = grid.shape[0] // self.classes.shape[0]  # Captum evaluates several perturbations per batch
        classes = self.classes.repeat(reps, 1)
        return logits.gather(2, classes[:, :, None])[:, :, 0]


class HeadView(nn.Module):
    """One head of a harness as an ordinary classifier: grid (B, C, nH, nW) → logits (B, K)."""

    def __init__(self, harness: GridHarness, head: int):
        super().__init__()
        self.harness = harness
        self.head = head

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.harness(grid, self.head)


def check_harness(harness: GridHarness, cell_shape: tuple[int, ...], device: torch.device | str) -> None:
    """Probe the harness once; raise :class:`GridUnsupported` with a reason when it cannot work."""
    n = harness.n
    c, h, w = cell_shape
    probe = torch.zeros((1, c, n * h, n * w), device=device)
    if harness.mode == "part":
        seen: dict[str, tuple[int, ...]] = {}

        def record(_module, _inputs, output):
            seen["shape"] = tuple(output.shape[1:])
            raise _StopProbe  # the head cannot take the whole grid's features; stop here

        handle = dict(harness.model.named_modules())[harness._split.name].register_forward_hook(record)
        try:
            with torch.no_grad():
                harness.model(probe)
        except _StopProbe:
            pass
        except Exception as exc:
            raise GridUnsupported(f"the model does not accept a {n * h}×{n * w} grid: {type(exc).__name__}: {exc}") from exc
        finally:
            handle.remove()
        expect = harness._split.shape
        got = seen.get("shape")
        if got is None or got[1] != n * expect[1] or got[2] != n * expect[2]:
            raise GridUnsupported(
                f"feature map of the grid at {harness._split.name} is {got}, not {n}× the single-cell map {expect}")
    noise = torch.rand((2, c, n * h, n * w), generator=torch.Generator().manual_seed(0)).to(device)
    with harness.attached(), torch.no_grad():
        try:
            out = harness(noise)
            one_by_one = torch.stack([harness(noise, k) for k in range(n * n)], 1)
        except Exception as exc:
            raise GridUnsupported(f"{type(exc).__name__}: {exc}") from exc
    if out.dim() != 3 or out.shape[1] != n * n:
        raise GridUnsupported(f"unexpected harness output shape {tuple(out.shape)}")
    scale = float(one_by_one.abs().max()) + 1e-6
    if float((out - one_by_one).abs().max()) > 1e-4 * scale:
        # e.g. a model whose head reshapes with a batch size read at the input
        raise GridUnsupported("the model's head does not accept the per-cell blocks of all heads in one batch")
