"""Orchestration: run the selected detectors on one target and fuse a verdict. No I/O, no printing."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from auditor import __version__
from auditor.compute import ComputePlan, calibration_note, parse_effort, plan
from auditor.detectors import create, registered
from auditor.detectors.base import COMMON_OPTIONS, DetectorResult, RunContext
from auditor.errors import OptionError, UsageError
from auditor.spec import InputSpec
from auditor.target import ModelInfo, ModelTarget
from auditor.verdict import Verdict, fuse

DetectorObserver = Callable[[str, str], None]  # (detector name, event: "start" | "done")


@dataclass(frozen=True, eq=False)
class AuditReport:
    """Everything a report writer needs; writers are pure functions of this object."""

    tool_version: str
    model: ModelInfo
    spec: InputSpec
    labels: tuple[str, ...]
    seed: int
    verdict: Verdict
    results: tuple[DetectorResult, ...]
    timings: Mapping[str, float]
    device: str = "cpu"
    settings: Mapping[str, Any] = field(default_factory=dict)
    fidelity: Any = None  # an optional fidelity-suite report (auditor.fidelity), rendered when present

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def result(self, name: str) -> DetectorResult | None:
        return next((r for r in self.results if r.name == name), None)


def default_detectors(modality: str) -> list[str]:
    """Detectors that run when ``--detectors`` is not given: every default detector for the modality."""
    return [n for n, cls in registered().items() if cls.info.default and modality in cls.info.modalities]


def resolve_detectors(names: Sequence[str] | None, modality: str) -> list[str]:
    if not names:
        return default_detectors(modality)
    known = registered()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown detector(s): {', '.join(unknown)} (available: {', '.join(known)})")
    return list(dict.fromkeys(names))


def check_options(options: Mapping[str, Mapping[str, Any]], thresholds: Mapping[str, Any] | None = None) -> None:
    """Refuse ``--option NAME.KEY`` / ``--threshold NAME`` for a detector or key that does not exist
    (:class:`OptionError`, exit 2), naming the close matches: a typo must not silently run the default.
    ``fidelity`` is the explanation-fidelity suite's namespace. Values are checked where they are read."""
    from dataclasses import fields

    from auditor.fidelity.suite import SuiteOptions

    namespaces = {name: (*cls.info.options, *COMMON_OPTIONS) for name, cls in registered().items()}
    namespaces["fidelity"] = tuple(f.name for f in fields(SuiteOptions))
    for name, given in options.items():
        if name not in namespaces:
            raise OptionError(f"--option {name}.…: no detector is called {name!r}{_did_you_mean(name, namespaces)}"
                              f" (available: {', '.join(namespaces)})")
        for key in given:
            if key not in namespaces[name]:
                raise OptionError(f"--option {name}.{key}: {name} has no option {key!r}"
                                  f"{_did_you_mean(key, namespaces[name])} (options: {', '.join(namespaces[name])})")
    for name in thresholds or {}:
        if name not in registered():
            raise OptionError(f"--threshold {name}: no detector is called {name!r}"
                              f"{_did_you_mean(name, registered())} (available: {', '.join(registered())})")


def _did_you_mean(word: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def scan(
    target: ModelTarget,
    detectors: Sequence[str] | None,
    context: RunContext,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    thresholds: Mapping[str, float] | None = None,
    detector_timeout_s: float | None = None,
    total_timeout_s: float | None = None,
    observer: DetectorObserver | None = None,
    settings: Mapping[str, Any] | None = None,
    fidelity: bool = False,
    compute: ComputePlan | None = None,
) -> AuditReport:
    """Run ``detectors`` (names; None = defaults) in order and fuse their results.

    Each detector gets its own options and threshold, and a time budget that is the smaller of the
    per-detector budget and what is left of the total; once the total is spent the remaining
    detectors are reported as ``failed: timeout`` without running. With ``fidelity``, every class map
    gets measured faithfulness badges and the fidelity suite's figures are attached to the report.
    ``compute`` is the compute plan (default: :func:`plan_compute` with the automatic budget): each
    detector runs at its effort, and the plan is recorded in the report's settings.
    """
    names = resolve_detectors(detectors, target.spec.modality)
    options = options or {}
    thresholds = thresholds or {}
    check_options(options, thresholds)
    compute = compute or plan_compute(target, names, options)
    settings = {**(settings or {}), "compute": compute.to_dict()}
    started = time.monotonic()
    results: list[DetectorResult] = []
    timings: dict[str, float] = {}
    for name in names:
        remaining = None if total_timeout_s is None else total_timeout_s - (time.monotonic() - started)
        if remaining is not None and remaining <= 0:
            results.append(DetectorResult(name, "failed", f"timeout: total budget of {total_timeout_s:g} s spent"))
            continue
        budget = _min_optional(detector_timeout_s, remaining)
        ctx = replace(context, time_budget_s=budget, options=dict(options.get(name, {})),
                      threshold=thresholds.get(name, context.threshold), effort=compute.efforts.get(name, 1.0))
        if observer:
            observer(name, "start")
        result = create(name).run(target, ctx)
        if fidelity and result.status == "ok":
            result = _with_badges(result, target, ctx)
        results.append(result)
        timings[name] = result.seconds
        if observer:
            observer(name, "done")
    suite = None
    if fidelity:
        suite, note = run_fidelity_suite(target, replace(context, options=dict(options.get("fidelity", {}))))
        settings = {**(settings or {}), "fidelity": note or "ran"}
    problem = output_problem(target, context.seed)
    if problem:
        results = [_invalidate(r, problem) for r in results]
    timings["total"] = time.monotonic() - started
    verdict = fuse(results, target.labels)
    caveats = tuple(note for r in results if r.status == "ok" and (note := calibration_note(
        r.name, registered()[r.name].info.calibrated_flops, compute.forward_flops)))
    if caveats:
        verdict = replace(verdict, notes=verdict.notes + caveats)
    return AuditReport(
        tool_version=__version__, model=target.info, spec=target.spec, labels=target.labels,
        seed=context.seed, verdict=verdict, results=tuple(results), timings=timings,
        device=str(target.device), settings=dict(settings or {}), fidelity=suite,
    )


def plan_compute(
    target: ModelTarget,
    detectors: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    *,
    effort: float | None = None,
    budget_flops: float | None = None,
) -> ComputePlan:
    """The compute plan for running ``detectors`` on ``target`` (see :mod:`auditor.compute`); a detector
    option ``effort`` (``--option NAME.effort=X``) fixes that detector's effort."""
    known = registered()
    work = {}
    for name in detectors:
        try:
            passes = known[name].planned_passes(target.num_classes, RunContext(options=dict(options.get(name, {}))))
        except OptionError as exc:
            raise OptionError(f"{name}: {exc}") from None
        work[name] = (passes, known[name].info.tolerated_effort)
    computed = plan(target, work, effort=effort, budget_flops=budget_flops)
    fixed = {name: parse_effort(options[name]["effort"], f"--option {name}.effort") for name in detectors
             if "effort" in options.get(name, {})}
    fixed = {name: value for name, value in fixed.items() if value is not None}
    if not fixed:
        return computed
    by_option = ", ".join(f"--option {n}.effort" for n in fixed)
    requested = by_option if computed.requested == "auto" else f"{computed.requested} and {by_option}"
    return replace(computed, efforts={**computed.efforts, **fixed}, requested=requested)


def run_fidelity_suite(target: ModelTarget, context: RunContext) -> tuple[Any, str]:
    """The explanation-fidelity suite, or (None, why it could not run)."""
    from auditor.errors import DetectorTimeout
    from auditor.fidelity import run_fidelity

    try:
        return run_fidelity(target, context), ""
    except (ValueError, DetectorTimeout) as exc:
        return None, f"not run: {exc}"


def _with_badges(result: DetectorResult, target: ModelTarget, context: RunContext) -> DetectorResult:
    from auditor.fidelity import attach_badges

    try:
        return attach_badges(result, target, context)
    except Exception as exc:  # badges are extra evidence; their failure must not drop the detector's result
        return replace(result, fidelity={**(result.fidelity or {}), "badges": f"not computed: {exc}"})


def output_problem(target: ModelTarget, seed: int, probes: int = 16) -> str:
    """Why the model's outputs cannot carry evidence ('' when they can): non-finite or constant logits.

    Probes are diverse valid inputs (uniform noise, constants, a smooth ramp); a classifier whose logits
    do not change across them, or are NaN/Inf, makes every detector's statistic meaningless.
    """
    g = torch.Generator().manual_seed(seed)
    shape = target.spec.shape
    x = torch.rand((probes, *shape), generator=g)
    x[0].zero_()
    x[1].fill_(1.0)
    if target.spec.modality == "points":
        x = x * 2 - 1
    logits = target.logits(x).double()
    if not torch.isfinite(logits).all():
        return "the model outputs NaN or infinite logits on valid inputs"
    if float((logits - logits[0]).abs().max()) <= 1e-6 * max(1.0, float(logits.abs().max())):
        return "the model's logits do not change with the input (constant output)"
    return ""


def _invalidate(result: DetectorResult, reason: str) -> DetectorResult:
    if result.status != "ok":
        return result
    classes = tuple(replace(c, flagged=False, valid=False, invalid_reason=reason, role="") for c in result.classes)
    return replace(result, classes=classes, model_score=None)


def _min_optional(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None
