"""Fidelity badges for a detector's class maps (``auditor scan --fidelity``).

A detector's class map is only as good as the procedure that made it, so the badge re-runs that
procedure on two models whose right answers are known:

* **DiFull L** — the detector runs on a 2×2 DiFull grid model whose logits depend *only* on the
  top-left cell (head 0); the share of the class map's mass inside that cell is L (1 = faithful,
  0.25 = uniform). Input-agnostic maps qualify: whatever distribution the detector samples, no pixel
  outside the top-left cell can influence the model.
* **randomisation ρ** — the detector runs on a deep copy of the model with *every* layer
  re-initialised (the last stage of Adebayo et al.'s cascade); ρ is the Spearman rank correlation
  between the trained and the randomised model's class map. A map that survives randomisation
  (ρ near 1) shows the procedure's prior, not the model.

Class-map pixels are read as magnitudes (an RGB picture is averaged over channels).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from auditor.detectors.base import DetectorResult, EvidenceImage, RunContext
from auditor.fidelity.grids import GridHarness, HeadView
from auditor.fidelity.layers import LayerChoice
from auditor.fidelity.metrics import spearman_rows
from auditor.fidelity.randomisation import randomisation_stages, reinitialise_
from auditor.spec import InputSpec
from auditor.target import ModelTarget

Rerun = Callable[[ModelTarget, RunContext], DetectorResult]
#: Evidence kinds that are maps of where the model looks (each gets a badge).
MAP_KINDS = ("class_map", "location_map")


def attach_badges(result: DetectorResult, target: ModelTarget, context: RunContext, *,
                  rerun: Rerun | None = None, grid: int = 2) -> DetectorResult:
    """A copy of ``result`` whose map evidence images (:data:`MAP_KINDS`) carry
    ``fidelity = {"difull_L": …, "randomisation_rho": …}``.

    ``rerun(target, context)`` runs the detector again (default: the registered detector of the same
    name). Costs two extra detector runs (one on a ``grid``× larger input). The audited model is
    never modified. Results without class maps, or not ``ok``, are returned unchanged.
    """
    if result.status != "ok" or not _has_class_maps(result) or target.spec.modality != "image":
        return result
    if rerun is None:
        from auditor.detectors.base import create

        detector = create(result.name)
        rerun = detector.run
    started = time.monotonic()
    randomised = rerun(_randomised_target(target, context), context)
    difull = rerun(_difull_target(target, grid), context)
    problems = [f"{what}: {r.status} {r.reason}".strip() for what, r in (("randomised", randomised), ("DiFull", difull))
                if r.status != "ok"]

    def badge(img: EvidenceImage, rand_img: EvidenceImage | None, grid_img: EvidenceImage | None) -> EvidenceImage:
        fid = dict(img.fidelity or {})
        fid["difull_L"] = _top_left_share(grid_img.pixels, grid) if grid_img is not None else math.nan
        fid["randomisation_rho"] = _rho(img.pixels, rand_img.pixels) if rand_img is not None else math.nan
        return replace(img, fidelity=fid)

    classes = []
    for ev in result.classes:
        rand_ev = _class(randomised, ev.index)
        grid_ev = _class(difull, ev.index)
        images = tuple(
            badge(img, _nth_map(rand_ev.images if rand_ev else (), pos), _nth_map(grid_ev.images if grid_ev else (), pos))
            if img.kind in MAP_KINDS else img
            for img, pos in zip(ev.images, _map_positions(ev.images)))
        classes.append(replace(ev, images=images))
    top = tuple(
        badge(img, _nth_map(randomised.images, pos), _nth_map(difull.images, pos)) if img.kind in MAP_KINDS else img
        for img, pos in zip(result.images, _map_positions(result.images)))
    new = replace(result, classes=tuple(classes), images=top)
    ls, rhos = [], []
    for img in _all_maps(new):
        ls.append(img.fidelity["difull_L"])
        rhos.append(img.fidelity["randomisation_rho"])
    fidelity = dict(result.fidelity or {})
    fidelity.update({"difull_L_median": _nanmedian(ls), "randomisation_rho_median": _nanmedian(rhos),
                     "badge_seconds": time.monotonic() - started})
    if problems:
        fidelity["badge_problems"] = "; ".join(problems)
    return replace(new, fidelity=fidelity)


# --------------------------------------------------------------------------------------------------


def _has_class_maps(result: DetectorResult) -> bool:
    return any(True for _ in _all_maps(result))


def _all_maps(result: DetectorResult):
    for img in result.images:
        if img.kind in MAP_KINDS:
            yield img
    for ev in result.classes:
        for img in ev.images:
            if img.kind in MAP_KINDS:
                yield img


def _map_positions(images) -> list[int]:
    """For each image, its index among the maps (:data:`MAP_KINDS`) of the same tuple (-1 for other kinds)."""
    out, seen = [], 0
    for img in images:
        if img.kind in MAP_KINDS:
            out.append(seen)
            seen += 1
        else:
            out.append(-1)
    return out


def _nth_map(images, pos: int) -> EvidenceImage | None:
    maps = [i for i in images if i.kind in MAP_KINDS]
    return maps[pos] if 0 <= pos < len(maps) else None


def _class(result: DetectorResult, index: int):
    return next((c for c in result.classes if c.index == index), None) if result.status == "ok" else None


def _magnitude(pixels: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(np.asarray(pixels, dtype=np.float64))
    return arr.mean(2) if arr.ndim == 3 else arr


def _top_left_share(pixels: np.ndarray, grid: int) -> float:
    m = np.clip(_magnitude(pixels), 0, None)
    total = float(m.sum())
    h, w = m.shape[0] // grid, m.shape[1] // grid
    return float(m[:h, :w].sum()) / total if total > 0 else 0.0


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _magnitude(a), _magnitude(b)
    if a.shape != b.shape:
        return math.nan
    return float(spearman_rows(a.reshape(1, -1), b.reshape(1, -1))[0])


def _nanmedian(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else math.nan


def _copy_model(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _randomised_target(target: ModelTarget, context: RunContext) -> ModelTarget:
    """Every parametrised layer re-initialised (seeded), on a deep copy."""
    model = _copy_model(target.model)
    example = torch.zeros((1, *target.spec.shape), device=target.device)
    for _, names in randomisation_stages(model, example, max_stages=10**6):
        reinitialise_(model, names, context.generator("cpu", 89))
    return replace(target, model=model)


def _difull_target(target: ModelTarget, grid: int) -> ModelTarget:
    """A classifier of grid×grid images whose logits are the trained model's on the top-left cell only."""
    c, h, w = target.spec.shape
    harness = GridHarness(_copy_model(target.model), "full", grid, (LayerChoice("input", "", (c, h, w)),))
    harness.lean = True  # only head 0's cell is computed; the others provably cannot matter
    spec = InputSpec("image", (c, grid * h, grid * w))
    return ModelTarget.from_module(HeadView(harness, 0), spec, target.labels, device=target.device,
                                   name=f"DiFull {grid}×{grid} harness (head 0)")
