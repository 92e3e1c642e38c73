"""Compute plan: how much of the default detector work a scan spends, decided before anything runs.

The default detectors' sample counts suit the small networks they were calibrated on; on a standard
network (a CIFAR ResNet-18 costs ~1.1 GFLOP per forward pass, 150× a zoo model) the same work takes
most of an hour on two CPU cores. The plan counts the model's FLOPs per forward pass once
(:func:`forward_flops`), asks every selected detector how many forward-pass equivalents its default
work takes (:meth:`Detector.planned_passes`), and, when the total exceeds the device's budget, gives
each detector an *effort* ≤ 1 — the share of its default sample and step counts it runs, never below
its own floors. The budget is taken first from detectors whose registry entry says they tolerate a
lower effort (``tolerated_effort``, measured on the zoo: bench/RESULTS.md §8), down to that
tolerance; only if that is not enough are all efforts lowered together. Efforts are a pure function
of the model and the settings (FLOPs, not wall time), so the same scan gives the same report on any
machine with the same device kind. Options set explicitly (``--option``) are never scaled, and
``--option NAME.effort=X`` fixes one detector's effort.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from auditor.target import ModelTarget

#: Default FLOP budgets of one scan's scalable detector work, per device kind. CPU: a 10-class CIFAR
#: ResNet-18 then runs max_margin at ≈ 0.1 and saliency at full effort, in 7.7 min on two cores of this
#: project's machine (bench/RESULTS.md §8). Every zoo and reference model (≤ 16 MFLOP per pass) stays at
#: effort 1 with up to 40 classes, so the calibrated defaults are what runs on them. CUDA: 50× that (a
#: GPU runs a ResNet-18 scan at full effort).
DEFAULT_BUDGET_FLOPS: Mapping[str, float] = {"cpu": 1e14, "cuda": 5e15}
#: Below this, detectors stop at their floors anyway; the plan reports what they actually ran.
MIN_EFFORT = 0.01
#: The largest network of the clean reference population that the calibrated detectors' thresholds come
#: from (``bench/zoo.py --reference``): the digits ViT, 11.6 MFLOP per forward pass (PointNets 10.6).
REFERENCE_MAX_FLOPS = 1.2e7
#: Beyond this multiple of a detector's calibrated size, the report says its thresholds are extrapolated
#: (the reference networks span 1–12 MFLOP; a 4× larger one is unlike any of them). On a CIFAR ResNet-18
#: (≈ 90×) saliency flagged a clean twin just over its threshold (bench/RESULTS.md §8).
EXTRAPOLATION_FACTOR = 4.0


@dataclass(frozen=True)
class ComputePlan:
    """What the scan will spend: ``efforts`` per detector (the share of its default work it runs)."""

    forward_flops: float
    planned_flops: float                 # all selected detectors at effort 1
    budget_flops: float | None           # None when the effort was given (--effort)
    efforts: Mapping[str, float]
    requested: str                       # "auto", "--effort X" and/or the --option NAME.effort that set it

    @property
    def effort(self) -> float:
        """The smallest detector effort (1 when every detector runs its full default work)."""
        return min(self.efforts.values(), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"forward_flops": self.forward_flops, "planned_flops_at_full_effort": self.planned_flops,
                "budget_flops": self.budget_flops, "efforts": dict(self.efforts), "requested": self.requested,
                "summary": self.describe()}

    def describe(self) -> str:
        if self.effort >= 1.0:
            return f"full effort ({self.planned_flops:.2g} FLOP planned)"
        shares = ", ".join(f"{name} {e:.2g}" for name, e in self.efforts.items() if e < 1.0)
        why = (f"the default work ({self.planned_flops:.2g} FLOP at {self.forward_flops:.2g} FLOP per forward pass) "
               f"exceeds the budget of {self.budget_flops:.2g} FLOP" if self.requested == "auto"
               else f"set by {self.requested}")
        return f"reduced effort ({shares} of the default work): {why}"


def calibration_note(name: str, calibrated_flops: float | None, model_flops: float) -> str:
    """'' when ``name``'s thresholds were calibrated on networks of about this size (or need no calibration
    population), else one sentence for the verdict's notes saying they are extrapolated here."""
    if calibrated_flops is None or model_flops <= EXTRAPOLATION_FACTOR * calibrated_flops:
        return ""
    return (f"{name}: this model costs {model_flops:.2g} FLOP per forward pass, {model_flops / calibrated_flops:.0f}× "
            f"the largest network its thresholds were calibrated on ({calibrated_flops:.2g}); they are "
            "extrapolated here, so a class near its threshold is weak evidence")


def forward_flops(target: ModelTarget) -> float:
    """FLOPs of one forward pass on one canonical sample (matmuls, convolutions, attention).

    Counted with torch's FLOP counter on the model as loaded, so it is exact for the graph that runs and
    does not depend on the machine. Falls back to 2 × parameters when nothing is counted (e.g. a runtime
    whose ops the counter does not see)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *target.spec.shape), device=target.device)
    if target.spec.modality == "points":
        x = x.uniform_(-1.0, 1.0, generator=torch.Generator(device=target.device).manual_seed(0))
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            target.model(x)
        counted = float(counter.get_total_flops())
    except Exception:  # the counter is an estimate aid; a model it cannot trace still gets a plan
        counted = 0.0
    if counted > 0:
        return counted
    return 2.0 * float(sum(p.numel() for p in target.model.parameters()))


def parse_effort(text: str | float | None, what: str = "--effort") -> float | None:
    """``auto``/None → None (plan from the budget); a number in [MIN_EFFORT, 1] → that effort."""
    from auditor.errors import UsageError

    if text is None or (isinstance(text, str) and text.strip().lower() in {"", "auto"}):
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} takes 'auto' or a number in (0, 1] (got {text!r})") from None
    if not MIN_EFFORT <= value <= 1.0:
        raise UsageError(f"{what} must be between {MIN_EFFORT:g} and 1 (got {text!r})")
    return value


def plan(
    target: ModelTarget,
    work: Mapping[str, tuple[float, float]],
    *,
    effort: float | None = None,
    budget_flops: float | None = None,
) -> ComputePlan:
    """Decide each detector's effort. ``work``: name → (forward-pass equivalents at effort 1, the lowest
    effort the detector tolerates); ``effort`` None = auto (fit ``budget_flops``, default
    :data:`DEFAULT_BUDGET_FLOPS` for the target's device kind), else that effort for every detector."""
    flops = forward_flops(target)
    planned = {name: flops * float(passes) for name, (passes, _) in work.items()}
    total = sum(planned.values())
    if effort is not None:
        return ComputePlan(flops, total, None, {name: float(effort) for name in work}, f"--effort {effort:g}")
    budget = float(budget_flops if budget_flops is not None
                   else DEFAULT_BUDGET_FLOPS.get(target.device.type, DEFAULT_BUDGET_FLOPS["cpu"]))
    tolerated = {name: min(1.0, max(MIN_EFFORT, float(t))) for name, (_, t) in work.items()}
    at_tolerance = sum(planned[n] * tolerated[n] for n in work)
    if total <= budget:
        efforts = {name: 1.0 for name in work}
    elif at_tolerance <= budget:
        # move every tolerant detector the same fraction of the way to its tolerance
        step = (total - budget) / (total - at_tolerance)
        efforts = {n: 1.0 - step * (1.0 - tolerated[n]) for n in work}
    else:
        scale = budget / at_tolerance
        efforts = {n: max(MIN_EFFORT, tolerated[n] * scale) for n in work}
    # a detector whose work does not scale (0 planned passes) always runs as it is
    efforts = {n: (e if planned[n] > 0 else 1.0) for n, e in efforts.items()}
    return ComputePlan(flops, total, budget, efforts, "auto")
