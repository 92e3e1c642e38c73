"""The explanation fidelity suite: every picture the report shows carries a measured faithfulness figure.

``run_fidelity(target, context)`` measures, on the user's own model and without retraining:

1. **DiFull / DiPart localisation** (Rao, Böhle, Schiele, CVPR 2022) of Gradient, Input×Gradient,
   Integrated Gradients, Grad-CAM, Layer-CAM, Occlusion and any project map method, each at the same
   three layers (ML-Att: input, a middle block, the last spatial block), with AggAtt bins;
2. **smoothing leakage**: DiFull L of Gaussian-smoothed IxG / IntGrad maps (K, σ = K/4);
3. **cascading randomisation** (Adebayo et al. 2018): Spearman |·| / signed and SSIM per stage;
4. optionally, for a flagged class's **triggered inputs**, the share of positive attribution inside the
   trigger box per method, with AggAtt bins sorted by that share.

Everything runs on deep copies of ``target.model``; the audited model is never hooked or modified.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from auditor.detectors.base import RunContext
from auditor.fidelity.aggatt import AggAttBin, aggatt
from auditor.fidelity.grids import (
    AllHeads,
    GridHarness,
    GridUnsupported,
    HeadView,
    assemble_cells,
    cell_box,
    check_harness,
)
from auditor.fidelity.layers import LayerChoice, choose_layers
from auditor.fidelity.methods import (
    ALL_HEADS,
    GRADIENT_FAMILY,
    LABELS,
    METHODS,
    MapFn,
    MethodOptions,
    activations,
    attribute,
    attribute_all_heads,
    gradient_family,
    supports,
    upsample,
)
from auditor.fidelity.metrics import Box, finite_mean, finite_median, gaussian_smooth, localisation
from auditor.fidelity.randomisation import RandomisationCurve, randomisation_stages, reinitialise_, similarity
from auditor.target import ModelTarget

SETTINGS = {"full": "DiFull", "part": "DiPart"}


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, eq=False)
class MethodScore:
    """Localisation of one method at one layer in one setting (DiFull or DiPart)."""

    setting: str
    method: str
    role: str
    layer: str
    mean_L: float
    median_L: float
    frac_ge_099: float
    count: int
    bins: tuple[AggAttBin, ...] = ()
    mean_L_upsampled: float = math.nan  # L of the bilinearly upsampled maps (what the pictures show)
    # maps with no positive mass at all score L = 0 by definition (e.g. the gradient at a layer followed by
    # global average pooling is constant per cell, and negative for some classes)
    frac_no_positive: float = 0.0


@dataclass(frozen=True)
class SmoothingScore:
    """DiFull L of a Gaussian-smoothed input map; ``leakage`` = unsmoothed L − smoothed L."""

    method: str
    kernel: int
    sigma: float
    mean_L: float
    leakage: float


@dataclass(frozen=True, eq=False)
class TriggerScore:
    """Planted-trigger check: positive attribution inside the trigger box on triggered inputs."""

    method: str
    role: str
    layer: str
    box_share_median: float
    box_share_mean: float
    area_share: float
    enrichment: float
    pointing_hit: float
    count: int
    bins: tuple[AggAttBin, ...] = ()


@dataclass(frozen=True, eq=False)
class TriggeredInputs:
    """Inputs carrying a (planted or recovered) trigger, the class it leads to, and where it sits."""

    x: torch.Tensor
    target_class: int
    box: Box
    description: str = ""


@dataclass(frozen=True, eq=False)
class FidelityReport:
    """All figures of one suite run (frozen; images as arrays, rendering is a pure function)."""

    grid: int
    cell_source: str
    layers: tuple[LayerChoice, ...]
    methods: tuple[str, ...]
    labels: Mapping[str, str]
    scores: tuple[MethodScore, ...]
    smoothing: tuple[SmoothingScore, ...]
    randomisation: tuple[RandomisationCurve, ...]
    trigger: tuple[TriggerScore, ...]
    trigger_description: str
    notes: tuple[str, ...]
    seconds: float
    timings: Mapping[str, float]
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def score(self, method: str, setting: str = "DiFull", role: str = "input") -> MethodScore | None:
        for s in self.scores:
            if s.method == method and s.setting == setting and s.role == role:
                return s
        return None

    def curve(self, method: str) -> RandomisationCurve | None:
        return next((c for c in self.randomisation if c.method == method), None)

    def trigger_score(self, method: str, role: str = "input") -> TriggerScore | None:
        return next((t for t in self.trigger if t.method == method and t.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (no pictures)."""
        return {
            "grid": self.grid, "cell_source": self.cell_source, "seconds": self.seconds,
            "layers": [{"role": c.role, "name": c.name, "shape": list(c.shape)} for c in self.layers],
            "localisation": [
                {"setting": s.setting, "method": s.method, "layer": s.role, "mean_L": s.mean_L, "median_L": s.median_L,
                 "mean_L_upsampled": s.mean_L_upsampled,
                 "frac_no_positive": s.frac_no_positive, "frac_ge_0.99": s.frac_ge_099, "count": s.count} for s in self.scores],
            "smoothing": [vars(s) for s in self.smoothing],
            "randomisation": [
                {"method": c.method, "layer": c.layer, "stages": list(c.stages), "spearman_abs": list(c.spearman_abs),
                 "spearman_signed": list(c.spearman_signed), "ssim": list(c.ssim), "passes": c.passes}
                for c in self.randomisation],
            "trigger": [
                {"method": t.method, "layer": t.role, "box_share_median": t.box_share_median,
                 "box_share_mean": t.box_share_mean, "area_share": t.area_share, "enrichment": t.enrichment,
                 "pointing_hit": t.pointing_hit, "count": t.count,
                 "aggatt_box_share": {b.label: b.box_share for b in t.bins}} for t in self.trigger],
            "notes": list(self.notes), "timings": dict(self.timings),
        }


# --------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class SuiteOptions:
    """Every knob of the suite, read from ``context.option`` (defaults documented here).

    grid (2): cells per side. grids (16): grids per setting (each gives n² maps per method and layer).
    settings ("full,part"). methods (all six). ig_steps (8, Gauss–Legendre). occlusion_window / occlusion_stride (0:
    a quarter of the cell side, non-overlapping). smoothing_kernels (5,9,17). randomisation_images (16).
    randomisation_stages (6: at most this many top-down blocks). confidence (0.5: minimum softmax of a
    cell). am_steps (60: steps of the short activation maximisation that makes cells when no --data).
    layers ("": automatic; else "middle_module,last_module").
    """

    grid: int = 2
    grids: int = 16
    settings: tuple[str, ...] = ("full", "part")
    methods: tuple[str, ...] = METHODS
    ig_steps: int = 8
    occlusion_window: int = 0
    occlusion_stride: int = 0
    smoothing_kernels: tuple[int, ...] = (5, 9, 17)
    randomisation_images: int = 16
    randomisation_stages: int = 6
    confidence: float = 0.5
    am_steps: int = 60
    layers: str = ""

    @classmethod
    def from_context(cls, context: RunContext) -> SuiteOptions:
        d = cls()
        values = {name: context.option(name, getattr(d, name)) for name in d.__dataclass_fields__}
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# The suite


def run_fidelity(target: ModelTarget, context: RunContext, *, maps: Mapping[str, MapFn] | None = None,
                 triggered: TriggeredInputs | None = None) -> FidelityReport:
    """Run the whole suite on ``target`` (never modified). ``maps`` adds project map methods
    (name → ``fn(model, x, classes) -> (B, H, W)``), evaluated at the input like the others.
    Raises ``ValueError`` for models the suite cannot handle (not an image model, no gradients)."""
    if target.spec.modality != "image":
        raise ValueError("the fidelity suite needs an image classifier (point clouds have no pixel grid)")
    if not target.differentiable:
        raise ValueError("the fidelity suite needs gradients, but the model was loaded without a differentiable runtime")
    opts = SuiteOptions.from_context(context)
    if opts.grid < 1 or opts.grids < 1:
        raise ValueError("grid and grids must be ≥ 1")
    from dataclasses import replace

    opts = replace(opts, methods=tuple(m for m in opts.methods if m),
                   settings=tuple(m for m in opts.settings if m))
    unknown = [m for m in opts.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; known: {', '.join(METHODS)}")
    bad = [m for m in opts.settings if m not in SETTINGS]
    if bad:
        raise ValueError(f"unknown setting(s) {bad}; known: {', '.join(SETTINGS)} (DiFull, DiPart)")
    custom = dict(maps or {})
    return _Suite(target, context, opts, custom).run(triggered)


class _Suite:
    def __init__(self, target: ModelTarget, context: RunContext, opts: SuiteOptions, custom: dict[str, MapFn]):
        self.target, self.context, self.opts, self.custom = target, context, opts, custom
        self.device = target.device
        self.shape = tuple(target.spec.shape)
        self.model = _frozen_copy(target.model)
        names = tuple(opts.layers.split(",")) if opts.layers else None
        self.layers = choose_layers(self.model, self.shape, self.device, names)
        self.methods = tuple(opts.methods) + tuple(custom)
        self.mopts = MethodOptions(opts.ig_steps, opts.occlusion_window, opts.occlusion_stride,
                                   min(self.shape[1], self.shape[2]))
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}

    # -- orchestration ---------------------------------------------------------------------------
    def run(self, triggered: TriggeredInputs | None) -> FidelityReport:
        started = time.monotonic()
        ctx, opts = self.context, self.opts
        t0 = time.monotonic()
        cells, cell_classes, source = self._cells()
        grids, grid_classes = _build_grids(cells, cell_classes, opts.grid, opts.grids, ctx.generator("cpu", 71))
        self.timings["cells"] = time.monotonic() - t0
        scores: list[MethodScore] = []
        smoothing: list[SmoothingScore] = []
        for i, mode in enumerate(opts.settings):
            t0 = time.monotonic()
            ctx.report(f"{SETTINGS.get(mode, mode)} localisation", i / (len(opts.settings) + 2))
            try:
                collected = self._grid_maps(mode, grids, grid_classes)
            except GridUnsupported as exc:
                self.notes.append(f"{SETTINGS.get(mode, mode)} skipped: {exc}")
                continue
            scores += self._score(mode, collected)
            if mode == "full":
                smoothing = self._smoothing(collected)
            self.timings[SETTINGS.get(mode, mode)] = time.monotonic() - t0
        t0 = time.monotonic()
        ctx.report("cascading randomisation", len(opts.settings) / (len(opts.settings) + 2))
        randomisation = self._randomisation(cells, cell_classes)
        self.timings["randomisation"] = time.monotonic() - t0
        trigger: list[TriggerScore] = []
        if triggered is not None:
            t0 = time.monotonic()
            ctx.report("triggered inputs", (len(opts.settings) + 1) / (len(opts.settings) + 2))
            trigger = self._trigger(triggered)
            self.timings["trigger"] = time.monotonic() - t0
        ctx.report("done", 1.0)
        layer_text = ", ".join(f"{c.role}: {c.display}" for c in self.layers)
        description = (
            f"Attributed each head of {len(grids)} {opts.grid}×{opts.grid} grids (same class top-left and "
            f"bottom-right; cells from {source}) with {len(self.methods)} methods at {len(self.layers)} layers "
            f"({layer_text}) and measured the share of positive attribution inside the head's own cell (L, "
            f"uniform = {1 / opts.grid ** 2:.2f}); re-initialised the model top-down and measured how much the "
            f"maps of {len(cells[: opts.randomisation_images])} inputs change."
        )
        return FidelityReport(
            grid=opts.grid, cell_source=source, layers=self.layers, methods=self.methods,
            labels={m: LABELS.get(m, m) for m in self.methods}, scores=tuple(scores), smoothing=tuple(smoothing),
            randomisation=tuple(randomisation), trigger=tuple(trigger),
            trigger_description=(triggered.description if triggered is not None else ""), notes=tuple(self.notes),
            seconds=time.monotonic() - started, timings=dict(self.timings), description=description,
            options={k: getattr(opts, k) for k in opts.__dataclass_fields__},
        )

    # -- cells -----------------------------------------------------------------------------------
    def _cells(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Inputs the model classifies confidently: from --data, else a short activation maximisation."""
        per_class = max(4, math.ceil(self.opts.grids * self.opts.grid**2 / max(self.target.num_classes, 1)))
        data = self.context.data
        if data is not None and len(data) > 0:
            x = data.x.float()
            logits = self.target.logits(x).float().cpu()
            prob, pred = F.softmax(logits, 1).max(1)
            keep = prob >= self.opts.confidence
            if data.y is not None:
                keep &= pred == data.y.cpu()
            order = torch.randperm(len(x), generator=self.context.generator("cpu", 73))
            chosen = []
            counts: dict[int, int] = {}
            for i in order.tolist():
                if keep[i] and counts.get(int(pred[i]), 0) < per_class:
                    counts[int(pred[i])] = counts.get(int(pred[i]), 0) + 1
                    chosen.append(i)
            if len(counts) >= 2:
                idx = torch.tensor(sorted(chosen))
                return x[idx], pred[idx], f"--data ({len(idx)} confidently classified samples, {len(counts)} classes)"
            self.notes.append("too few confidently classified --data samples; cells were synthesised instead")
        x, y = _synthesise_cells(self.model, self.shape, self.target.num_classes, min(per_class, 8),
                                 self.opts.am_steps, self.context.generator("cpu", 79), self.device)
        logits = self.target.logits(x).float().cpu()
        prob, pred = F.softmax(logits, 1).max(1)
        keep = (pred == y) & (prob >= self.opts.confidence)
        if int(keep.sum()) < 2:
            keep = pred == y
        if int(keep.sum()) < 1:
            keep = torch.ones_like(y, dtype=torch.bool)
        return (x[keep], pred[keep],
                f"{self.opts.am_steps}-step activation maximisation from smooth noise ({int(keep.sum())} inputs)")

    # -- DiFull / DiPart -------------------------------------------------------------------------
    def _grid_maps(self, mode: str, grids: torch.Tensor, grid_classes: torch.Tensor) -> dict[tuple[str, str], dict]:
        """(method, role) → {"maps": (N, nH, nW) float32, "boxes": [...], "heads": [...]} over all heads."""
        n = self.opts.grid
        harness = GridHarness(self.model, mode, n, self.layers).to(self.device)
        check_harness(harness, self.shape, self.device)
        size = (n * self.shape[1], n * self.shape[2])
        out: dict[tuple[str, str], dict] = {}
        grids = grids.to(self.device)
        with harness.attached():
            for method in self.methods:
                if method in ALL_HEADS:  # perturbation methods: one pass serves every head
                    self.context.check_time()
                    started = time.monotonic()
                    native = attribute_all_heads(method, AllHeads(harness, grid_classes.to(self.device)), grids,
                                                 self.mopts).float().cpu()  # (B, n², H, W)
                    self.timings[f"method:{method}"] = self.timings.get(f"method:{method}", 0.0) + time.monotonic() - started
                    entry = {"maps": [], "boxes": [], "heads": [], "L": [], "inside": []}
                    for k in range(n * n):
                        box = cell_box(k, n, *size)
                        L, inside = localisation(native[:, k], box)
                        entry["maps"].append(native[:, k])
                        entry["boxes"] += [box] * len(native)
                        entry["heads"] += [k] * len(native)
                        entry["L"].append(L)
                        entry["inside"].append(inside)
                    out[(method, "input")] = entry
            for layer in self.layers:
                family, others = self._split_methods(layer.role)
                acts = None
                if family:  # activations of the whole grid, shared by every head (Grad-CAM reads them all)
                    harness.lean = False
                    acts = activations(lambda g: harness(g), self._point(harness, layer.role), grids)
                harness.lean = True  # per head, DiFull computes only the attributed cell (exact, see grids.py)
                for k in range(n * n):
                    self.context.check_time()
                    view = HeadView(harness, k)
                    classes = grid_classes[:, k].to(self.device)
                    box = cell_box(k, n, *size)
                    natives = self._layer_maps(family, others, view, harness, layer.role, grids, classes, acts)
                    for method, native in natives.items():
                        # L at the layer's own resolution, where the cells are exactly aligned: bilinear
                        # upsampling would smear mass across a cell border (pictures use the upsampled maps)
                        L, inside = localisation(native, cell_box(k, n, native.shape[1], native.shape[2]))
                        entry = out.setdefault((method, layer.role),
                                               {"maps": [], "boxes": [], "heads": [], "L": [], "inside": []})
                        entry["maps"].append(upsample(native, size))
                        entry["boxes"] += [box] * len(native)
                        entry["heads"] += [k] * len(native)
                        entry["L"].append(L)
                        entry["inside"].append(inside)
        for entry in out.values():
            entry["maps"] = torch.cat(entry["maps"])
            entry["L"] = np.concatenate(entry["L"])
            entry["inside"] = np.concatenate(entry["inside"])
        return out

    def _split_methods(self, role: str) -> tuple[list[str], list[str]]:
        """(gradient-family methods sharing one backward pass, other per-head methods) at this layer."""
        usable = [m for m in self.methods if m not in ALL_HEADS and self._applies(m, role)]
        family = [m for m in usable if m in GRADIENT_FAMILY and m not in self.custom]
        return family, [m for m in usable if m not in family]

    def _point(self, harness: GridHarness, role: str):
        return None if role == "input" else harness.point(role)

    def _layer_maps(self, family, others, view, harness, role, x, classes, acts) -> dict[str, torch.Tensor]:
        """Native-resolution maps of every method at one layer for one head."""
        out: dict[str, torch.Tensor] = {}
        if family:
            started = time.monotonic()
            maps = gradient_family(family, view, self._point(harness, role), x, classes, acts)
            out.update({m: v.float().cpu() for m, v in maps.items()})
            self.timings["method:gradient family"] = self.timings.get("method:gradient family", 0.0) + time.monotonic() - started
        for method in others:
            out[method] = self._maps(method, view, harness, role, x, classes, None)
        return out

    def _applies(self, method: str, role: str) -> bool:
        if method in self.custom:
            return role == "input"
        return supports(method, role)

    def _maps(self, method, forward, harness, role, x, classes, size) -> torch.Tensor:
        uses_point = role != "input" or method in ("gradcam", "layercam")
        point = harness.point(role) if uses_point and method not in self.custom else None
        started = time.monotonic()
        maps = attribute(method, forward, point, x, classes, self.mopts, self.custom).float().detach()
        maps = maps.cpu() if size is None else upsample(maps, size).cpu()
        key = f"method:{method}"
        self.timings[key] = self.timings.get(key, 0.0) + time.monotonic() - started
        return maps

    def _score(self, mode: str, collected: dict) -> list[MethodScore]:
        n = self.opts.grid
        layer_names = {c.role: c.display for c in self.layers}
        scores = []
        for (method, role), entry in collected.items():
            maps = entry["maps"]
            L, inside = entry["L"], entry["inside"]
            L_up = finite_mean(localisation(maps, entry["boxes"])[0])
            aligned = _align_to_top_left(maps, entry["heads"], n)
            box0 = cell_box(0, n, maps.shape[1], maps.shape[2])
            bins = aggatt(aligned, L, inside, box0)
            scores.append(MethodScore(SETTINGS.get(mode, mode), method, role, layer_names[role], finite_mean(L),
                                      finite_median(L), float(np.mean(L >= 0.99)), len(L), bins, L_up,
                                      float(np.mean(maps.clamp(min=0).flatten(1).sum(1).numpy() <= 0))))
        order = {m: i for i, m in enumerate(self.methods)}
        roles = {c.role: i for i, c in enumerate(self.layers)}
        return sorted(scores, key=lambda s: (roles[s.role], order[s.method]))

    def _smoothing(self, collected: dict) -> list[SmoothingScore]:
        rows = []
        for method in ("ixg", "intgrad"):
            entry = collected.get((method, "input"))
            if entry is None:
                continue
            base = finite_mean(localisation(entry["maps"], entry["boxes"])[0])
            for kernel in self.opts.smoothing_kernels:
                L, _ = localisation(gaussian_smooth(entry["maps"], int(kernel)), entry["boxes"])
                rows.append(SmoothingScore(method, int(kernel), kernel / 4.0, finite_mean(L), base - finite_mean(L)))
        return rows

    # -- randomisation ---------------------------------------------------------------------------
    def _randomisation_plan(self) -> list[tuple[str, str]]:
        last = self.layers[-1].role
        plan = []
        for method in self.methods:
            role = last if method in ("gradcam", "layercam") else "input"
            if self._applies(method, role):
                plan.append((method, role))
        return plan

    def _randomisation(self, cells: torch.Tensor, cell_classes: torch.Tensor) -> list[RandomisationCurve]:
        count = min(self.opts.randomisation_images, len(cells))
        pick = _spread(cell_classes, count)
        x, classes = cells[pick].to(self.device), cell_classes[pick].to(self.device)
        model = _frozen_copy(self.model)
        harness = GridHarness(model, "full", 1, self.layers).to(self.device)
        view = HeadView(harness, 0)
        size = self.shape[1:]
        plan = self._randomisation_plan()
        example = torch.zeros((1, *self.shape), device=self.device)
        stages = randomisation_stages(model, example, self.opts.randomisation_stages)
        g = self.context.generator("cpu", 83)

        def all_maps() -> dict[tuple[str, str], np.ndarray]:
            res = {}
            with harness.attached():
                for role in dict.fromkeys(r for _, r in plan):
                    self.context.check_time()
                    wanted = [m for m, r in plan if r == role]
                    family = [m for m in wanted if m in GRADIENT_FAMILY and m not in self.custom]
                    others = [m for m in wanted if m not in family]
                    acts = activations(lambda g: harness(g), self._point(harness, role), x) if family else None
                    for method, native in self._layer_maps(family, others, view, harness, role, x, classes, acts).items():
                        res[(method, role)] = upsample(native, size).numpy()
            return res

        reference = all_maps()
        sims: dict[tuple[str, str], list[tuple[float, float, float]]] = {key: [(1.0, 1.0, 1.0)] for key in plan}
        for _, names in stages:
            reinitialise_(model, names, g)
            current = all_maps()
            for key in plan:
                sims[key].append(similarity(reference[key], current[key]))
        labels = ("trained",) + tuple(label for label, _ in stages)
        layer_names = {c.role: c.display for c in self.layers}
        return [RandomisationCurve(method, layer_names[role], labels, tuple(s[0] for s in sims[(method, role)]),
                                   tuple(s[1] for s in sims[(method, role)]), tuple(s[2] for s in sims[(method, role)]))
                for method, role in plan]

    # -- triggered inputs ------------------------------------------------------------------------
    def _trigger(self, triggered: TriggeredInputs) -> list[TriggerScore]:
        harness = GridHarness(self.model, "full", 1, self.layers).to(self.device)
        view = HeadView(harness, 0)
        x = triggered.x.float().to(self.device)
        classes = torch.full((len(x),), int(triggered.target_class), dtype=torch.long, device=self.device)
        size = self.shape[1:]
        t, l, b, r = triggered.box
        area = (b - t) * (r - l) / float(size[0] * size[1])
        layer_names = {c.role: c.display for c in self.layers}
        rows = []
        with harness.attached():
            for layer in self.layers:
                self.context.check_time()
                family, others = self._split_methods(layer.role)
                others += [m for m in self.methods if m in ALL_HEADS and self._applies(m, layer.role)]
                acts = activations(lambda g: harness(g), self._point(harness, layer.role), x) if family else None
                natives = self._layer_maps(family, others, view, harness, layer.role, x, classes, acts)
                for method in [m for m in self.methods if m in natives]:
                    maps = upsample(natives[method], size)
                    share, inside = localisation(maps, triggered.box)
                    flat = maps.flatten(1).argmax(1)
                    rr, cc = flat // size[1], flat % size[1]
                    hit = ((rr >= t) & (rr < b) & (cc >= l) & (cc < r)).float().mean().item()
                    med = finite_median(share)
                    rows.append(TriggerScore(method, layer.role, layer_names[layer.role], med, finite_mean(share), area,
                                             med / area if area > 0 else math.nan, hit, len(share),
                                             aggatt(maps.numpy(), share, inside, triggered.box)))
        return rows


# --------------------------------------------------------------------------------------------------
# Helpers


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _spread(classes: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` items taking classes in turn (so every class is represented)."""
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(classes.tolist()):
        by_class.setdefault(int(c), []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < count and any(depth < len(v) for v in by_class.values()):
        for c in sorted(by_class):
            if depth < len(by_class[c]) and len(picked) < count:
                picked.append(by_class[c][depth])
        depth += 1
    return torch.tensor(picked, dtype=torch.long)


def _build_grids(cells: torch.Tensor, classes: torch.Tensor, n: int, count: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` n×n grids: the same class top-left and bottom-right, other cells distinct other classes."""
    pools: dict[int, torch.Tensor] = {}
    for c in sorted(set(classes.tolist())):
        pools[int(c)] = torch.nonzero(classes == c).squeeze(1)
    available = sorted(pools)
    grids, labels = [], []
    for g in range(count):
        c = available[g % len(available)]
        others = [o for o in available if o != c] or [c]
        perm = torch.randperm(len(others), generator=generator).tolist()
        layout = []
        for k in range(n * n):
            if k == 0 or k == n * n - 1:
                layout.append(c)
            else:
                layout.append(others[perm[(k - 1) % len(others)]])
        idx = []
        for cls in layout:
            pool = pools[cls]
            idx.append(int(pool[torch.randint(len(pool), (1,), generator=generator)]))
        if n > 1 and len(pools[c]) > 1:  # two different pictures of the same class on the diagonal
            while idx[-1] == idx[0]:
                idx[-1] = int(pools[c][torch.randint(len(pools[c]), (1,), generator=generator)])
        grids.append(assemble_cells(cells[idx], n))
        labels.append(torch.tensor(layout))
    return torch.cat(grids), torch.stack(labels)


def _align_to_top_left(maps: torch.Tensor, heads: list[int], n: int) -> np.ndarray:
    """Cyclically shift each map so its head's cell sits top-left (AggAtt averages aligned maps)."""
    h, w = maps.shape[1] // n, maps.shape[2] // n
    out = maps.clone()
    for i, k in enumerate(heads):
        r, c = divmod(k, n)
        if r or c:
            out[i] = torch.roll(maps[i], shifts=(-r * h, -c * w), dims=(0, 1))
    return out.numpy()


def _synthesise_cells(model: torch.nn.Module, shape: tuple[int, ...], k: int, per_class: int, steps: int,
                      generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs the model assigns to each class: Adam on smooth noise maximising log p(class), in [0, 1]."""
    c, h, w = shape
    low = torch.rand((k * per_class, c, max(2, h // 4), max(2, w // 4)), generator=generator)
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).to(device).requires_grad_(True)
    y = torch.arange(k, device=device).repeat_interleave(per_class)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        logp = F.log_softmax(model(x), 1).gather(1, y[:, None]).sum()
        tv = (x[:, :, 1:] - x[:, :, :-1]).abs().sum() + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum()
        (-logp + 1e-3 * tv).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach().cpu(), y.cpu()
