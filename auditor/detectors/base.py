"""The detector contract: one ABC, one registry, frozen results.

A detector subclasses :class:`Detector`, is registered with :func:`register`, and implements
``_run(target, context) -> Findings``. The public :meth:`Detector.run` checks the detector's needs
once (gradients, data), enforces the time budget, times the call, turns exceptions into a ``failed``
result, and guarantees that no hooks are left on the model and its train/eval state is restored.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from auditor.errors import DetectorSkip, DetectorTimeout, OptionError
from auditor.target import ModelTarget, SampleData, frozen_eval

_log = logging.getLogger("auditor")

Status = Literal["ok", "skipped", "failed"]
ProgressObserver = Callable[[str, float], None]


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, eq=False)
class EvidenceImage:
    """A picture a human can check. ``pixels`` is (H, W) or (H, W, 3), float in [0, 1].

    ``kind`` says what it is (``trigger``, ``mask``, ``class_map``, ``am``, ``points`` …);
    ``fidelity`` carries measured faithfulness figures for the picture (e.g. DiFull L, randomisation ρ).
    """

    pixels: np.ndarray
    caption: str
    kind: str = "image"
    fidelity: Mapping[str, float] | None = None


@dataclass(frozen=True, eq=False)
class ClassEvidence:
    """One class as seen by one detector.

    ``score``: the detector's raw per-class statistic (higher = more suspicious).
    ``z``: robust z of that statistic against the detector's null (median/MAD or calibrated).
    ``role``: ``""``, ``"backdoor target"``, ``"unusual"`` or ``"spurious feature"``.
    ``valid``: False when the numbers could not be computed (NaN logits …), with ``invalid_reason``.
    ``strength``: the class's evidence in units of the detector's own decision threshold (1.0 at the
    threshold, above it when the headline statistic flags the class, ≤ 0 for none), so that detectors
    can be compared and combined (:mod:`auditor.verdict`); NaN when the detector has no such scale.
    """

    index: int
    score: float
    z: float
    flagged: bool
    role: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    images: tuple[EvidenceImage, ...] = ()
    description: str = ""
    valid: bool = True
    invalid_reason: str = ""
    strength: float = float("nan")


@dataclass(frozen=True, eq=False)
class Findings:
    """What ``_run`` returns; the base class wraps it into a :class:`DetectorResult`.

    ``model_score`` is in [0, 1], monotone in the evidence, and 0.5 at the detector's own threshold (so
    that one detector's score can be read against another's)."""

    model_score: float
    classes: tuple[ClassEvidence, ...]
    description: str = ""
    threshold: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    images: tuple[EvidenceImage, ...] = ()
    fidelity: Mapping[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class DetectorResult:
    """The outcome of one detector on one model.

    ``model_score`` is in [0, 1] (higher = more likely backdoored) when ``status == "ok"``.
    ``description`` says in one or two sentences what was optimised/measured; the report prints it.
    """

    name: str
    status: Status
    reason: str = ""
    seconds: float = 0.0
    model_score: float | None = None
    threshold: float | None = None
    classes: tuple[ClassEvidence, ...] = ()
    description: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    images: tuple[EvidenceImage, ...] = ()
    fidelity: Mapping[str, Any] | None = None

    @property
    def flagged_classes(self) -> tuple[int, ...]:
        return tuple(c.index for c in self.classes if c.flagged)


# --------------------------------------------------------------------------------------------------
# Run context


@dataclass(frozen=True, eq=False)
class RunContext:
    """Everything a detector may use besides the model.

    No global RNG: detectors draw randomness from :meth:`generator`. ``options`` holds this
    detector's own options (``--option NAME.KEY=VALUE``); ``threshold`` overrides the detector's
    default decision threshold. ``effort`` (≤ 1) is the share of its default work a detector spends
    (:mod:`auditor.compute` lowers it for large models; read it through :meth:`work_count`).
    """

    seed: int = 0
    time_budget_s: float | None = None
    data: SampleData | None = None
    progress: ProgressObserver | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    effort: float = 1.0
    started_at: float = field(default_factory=time.monotonic)

    def generator(self, device: torch.device | str = "cpu", salt: int = 0) -> torch.Generator:
        """A fresh generator seeded from the run seed (``salt`` separates independent streams)."""
        g = torch.Generator(device=device)
        g.manual_seed((int(self.seed) * 1_000_003 + int(salt)) % (2**63 - 1))
        return g

    def check_time(self) -> None:
        """Call from inner loops: raises :class:`DetectorTimeout` once the budget is spent."""
        if self.time_budget_s is not None and time.monotonic() - self.started_at > self.time_budget_s:
            raise DetectorTimeout(f"time budget of {self.time_budget_s:g} s spent")

    def report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(stage, min(max(fraction, 0.0), 1.0))

    def work_count(self, key: str, default: int, factor: float, floor: int) -> int:
        """A work count (samples, steps) at ``factor`` of its default, never below ``floor``; an option
        the user set explicitly is used as given. Detectors derive ``factor`` from :attr:`effort`."""
        if key in self.options:
            return int(self.option(key, default))
        return max(int(floor), min(int(default), round(default * factor)))

    def option(self, key: str, default: Any) -> Any:
        """An option value, converted to the type of ``default`` (options arrive as strings from the CLI).
        A value that does not convert raises :class:`OptionError` (a usage error, exit 2)."""
        if key not in self.options:
            return default
        value = self.options[key]
        if isinstance(default, bool) and isinstance(value, str):
            return value.strip().lower() in {"1", "true", "yes", "on"}
        if default is not None and not isinstance(value, type(default)):
            kind = type(default[0] if isinstance(default, tuple) and default else default)
            try:
                if isinstance(default, tuple):
                    return tuple(kind(v) for v in str(value).split(",")) if default else (value,)
                return kind(value)
            except (TypeError, ValueError):
                raise OptionError(f"option {key}={value!r} is not a valid {kind.__name__}") from None
        return value


# --------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class DetectorInfo:
    """Registry metadata shown by ``auditor detectors`` and used to decide skips."""

    name: str
    summary: str
    reference: str
    needs_gradients: bool = True
    needs_data: bool = False
    prefers_gpu: bool = False
    modalities: tuple[str, ...] = ("image",)
    default: bool = True
    #: The lowest effort (share of its default work) at which the detector's zoo figures held; the compute
    #: plan (auditor.compute) takes a large model's budget from such detectors first.
    tolerated_effort: float = 1.0
    #: The option keys it reads (``--option NAME.KEY=VALUE``), besides :data:`COMMON_OPTIONS`; any other
    #: key is a usage error, so a typo never silently runs the default.
    options: tuple[str, ...] = ()
    #: The largest forward-pass FLOPs among the clean networks its thresholds were calibrated on; None when
    #: its test needs no calibration population (a null fitted inside the scanned model). A scan of a far
    #: larger network says that the thresholds are extrapolated there (auditor.compute).
    calibrated_flops: float | None = None


#: Option keys every detector takes: ``effort`` is read by the compute plan (auditor.compute).
COMMON_OPTIONS = ("effort",)


class Detector(ABC):
    """Base class. Subclasses implement :meth:`_run`; callers use :meth:`run`."""

    info: ClassVar[DetectorInfo]

    @property
    def name(self) -> str:
        return self.info.name

    def run(self, target: ModelTarget, context: RunContext) -> DetectorResult:
        """Check needs once, run, and always return a result (never raises for detector errors)."""
        skip = self._unmet_need(target, context)
        if skip:
            return DetectorResult(name=self.name, status="skipped", reason=skip)
        started = time.monotonic()
        context = _restart_clock(context)
        hooks_before = count_hooks(target.model)
        try:
            with frozen_eval(target.model):
                findings = self._run(target, context)
            result = _wrap(self.name, findings, time.monotonic() - started)
        except DetectorTimeout as exc:
            result = DetectorResult(self.name, "failed", f"timeout: {exc}", time.monotonic() - started)
        except DetectorSkip as exc:
            result = DetectorResult(self.name, "skipped", str(exc), time.monotonic() - started)
        except OptionError as exc:  # the user's mistake, not the detector's: a usage error for the whole scan
            raise OptionError(f"{self.name}: {exc}") from None
        except Exception as exc:  # a detector bug must not take the whole audit down
            _log.debug("detector %s failed:\n%s", self.name, traceback.format_exc())
            reason = f"{type(exc).__name__}: {exc}"
            result = DetectorResult(self.name, "failed", reason, time.monotonic() - started)
        leaked = count_hooks(target.model) - hooks_before
        if leaked > 0:
            remove_all_hooks(target.model)
            result = DetectorResult(
                self.name, "failed", f"bug: detector left {leaked} hook(s) on the model", result.seconds
            )
        return result

    def _unmet_need(self, target: ModelTarget, context: RunContext) -> str:
        info = self.info
        if target.spec.modality not in info.modalities:
            return f"does not support {target.spec.modality} models (supports: {', '.join(info.modalities)})"
        if info.needs_gradients and not target.differentiable:
            return "needs gradients, but the model was loaded without a differentiable runtime"
        if info.needs_data and context.data is None:
            return "needs clean samples: pass --data DIR_OR_NPZ"
        return ""

    @classmethod
    def planned_passes(cls, num_classes: int, context: RunContext) -> float:
        """Forward-pass equivalents (a backward pass counts as two) of this detector's work at effort 1
        with ``context``'s options, for the compute plan. 0 = this detector does not scale its work."""
        return 0.0

    @abstractmethod
    def _run(self, target: ModelTarget, context: RunContext) -> Findings:
        """Detector body. Works in canonical input space on ``target.device``."""


_REGISTRY: dict[str, type[Detector]] = {}


def register(
    name: str,
    *,
    summary: str,
    reference: str,
    needs_gradients: bool = True,
    needs_data: bool = False,
    prefers_gpu: bool = False,
    modalities: tuple[str, ...] = ("image",),
    default: bool = True,
    tolerated_effort: float = 1.0,
    options: tuple[str, ...] = (),
    calibrated_flops: float | None = None,
) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator adding a detector to the registry; refuses duplicate names."""

    def decorate(cls: type[Detector]) -> type[Detector]:
        if name in _REGISTRY:
            raise ValueError(f"detector name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.info = DetectorInfo(
            name=name, summary=summary, reference=reference, needs_gradients=needs_gradients,
            needs_data=needs_data, prefers_gpu=prefers_gpu, modalities=modalities, default=default,
            tolerated_effort=tolerated_effort, options=tuple(options), calibrated_flops=calibrated_flops,
        )
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered() -> dict[str, type[Detector]]:
    """Name → class for every registered detector, in registration order."""
    return dict(_REGISTRY)


def create(name: str) -> Detector:
    return _REGISTRY[name]()


# --------------------------------------------------------------------------------------------------
# Hooks


def count_hooks(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total


def remove_all_hooks(model: nn.Module) -> None:
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._backward_hooks.clear()
        getattr(m, "_backward_pre_hooks", {}).clear()


# --------------------------------------------------------------------------------------------------
# Helpers


def _restart_clock(context: RunContext) -> RunContext:
    from dataclasses import replace

    return replace(context, started_at=time.monotonic())


def _finite(value: float, default: float = 0.0) -> float:
    value = float(value)
    return value if math.isfinite(value) else default


def _wrap(name: str, findings: Findings, seconds: float) -> DetectorResult:
    score = _finite(findings.model_score, 0.0)
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"detector {name} returned model_score {score} outside [0, 1]")
    return DetectorResult(
        name=name, status="ok", seconds=seconds, model_score=score, threshold=findings.threshold,
        classes=findings.classes, description=findings.description, metrics=dict(findings.metrics),
        images=findings.images, fidelity=findings.fidelity,
    )
