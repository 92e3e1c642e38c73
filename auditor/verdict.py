"""Fuse per-detector evidence into one verdict.

Rules (documented in the README, part of the public contract):
- a class is flagged when at least one detector that ran flags it (each detector applies its own
  calibrated statistic and threshold; ``--threshold`` overrides it), or when the two default detectors
  (:data:`AGREEMENT_DETECTORS`) both ran and their evidence for the class, each in units of its own
  threshold (``ClassEvidence.strength``), sums to :data:`AGREEMENT_THRESHOLD` — two independent tests
  half-convinced about the same class;
- ``model_score`` is the largest ``model_score`` among detectors that ran (each is in [0,1], monotone
  in its evidence and 0.5 at its own threshold) and the agreement's score (0.5 at its threshold), so
  the fused score is monotone in every detector's evidence and 0.5 where the verdict turns;
- the verdict is ``suspicious`` when any class is flagged, ``clean`` when at least one detector ran
  on valid numbers and none flagged, and ``inconclusive`` when nothing could be measured (every
  detector skipped or failed, or the model's outputs were not finite).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from auditor.detectors.base import DetectorResult
from auditor.stats import squash

VerdictStatus = Literal["clean", "suspicious", "inconclusive"]

#: The detectors whose evidence is summed for the agreement rule (the default set).
AGREEMENT_DETECTORS: tuple[str, ...] = ("saliency", "max_margin")
#: Sum of their clamped strengths at which a class is flagged by agreement: the smallest step of 0.25
#: above every clean reference model's largest sum (bench/verdict_fusion.py, bench/RESULTS.md §2c).
AGREEMENT_THRESHOLD = 1.5
#: Role of a class flagged by agreement alone.
AGREEMENT_ROLE = "unusual"


@dataclass(frozen=True)
class DetectorClassView:
    score: float
    z: float
    flagged: bool
    role: str = ""
    strength: float = float("nan")


@dataclass(frozen=True)
class ClassVerdict:
    index: int
    label: str
    flagged: bool
    score: float  # strongest robust z over the detectors that ran (NaN when none did)
    detectors: Mapping[str, DetectorClassView]
    roles: tuple[str, ...] = ()
    #: sum of the agreement detectors' clamped strengths (NaN unless both ran), and whether that sum is
    #: what flags the class (no detector flags it alone)
    agreement: float = float("nan")
    by_agreement: bool = False

    @property
    def flagged_by(self) -> tuple[str, ...]:
        own = tuple(name for name, view in self.detectors.items() if view.flagged)
        if not self.by_agreement:
            return own
        return own + tuple(name for name in AGREEMENT_DETECTORS if name not in own)


@dataclass(frozen=True)
class Verdict:
    status: VerdictStatus
    model_score: float | None
    flagged_classes: tuple[int, ...]
    classes: tuple[ClassVerdict, ...]
    notes: tuple[str, ...] = ()

    def headline(self, labels: Sequence[str]) -> str:
        """One sentence for banners and terminals (without the status word)."""
        if self.status == "suspicious":
            parts = []
            for i in self.flagged_classes:
                c = self.classes[i]
                how = (f"{' and '.join(c.flagged_by)} together (summed evidence {c.agreement:.2f} thresholds, "
                       f"flagged from {AGREEMENT_THRESHOLD:g})" if c.by_agreement else ", ".join(c.flagged_by))
                parts.append(f"class {i} ({labels[i]!r}) flagged by {how}")
            return "; ".join(parts)
        if self.status == "clean":
            return "no class flagged by any detector that ran"
        return "; ".join(self.notes) or "no detector produced valid evidence"


def _valid(result: DetectorResult) -> bool:
    return result.status == "ok" and any(c.valid for c in result.classes)


def agreement_strength(views: Mapping[str, DetectorClassView]) -> float:
    """Sum of the agreement detectors' strengths, each clamped at 0; NaN unless all of them have one."""
    values = [views[name].strength for name in AGREEMENT_DETECTORS if name in views]
    if len(values) < len(AGREEMENT_DETECTORS) or not all(math.isfinite(v) for v in values):
        return float("nan")
    return float(sum(max(v, 0.0) for v in values))


def fuse(results: Sequence[DetectorResult], labels: Sequence[str]) -> Verdict:
    usable = [r for r in results if _valid(r)]
    notes = []
    for r in results:
        if r.status != "ok":
            notes.append(f"{r.name} {r.status}: {r.reason}")
        elif not _valid(r):
            reason = next((c.invalid_reason for c in r.classes if c.invalid_reason), "invalid evidence")
            notes.append(f"{r.name}: {reason}")
    classes = []
    for index, label in enumerate(labels):
        views: dict[str, DetectorClassView] = {}
        for r in usable:
            ev = next((c for c in r.classes if c.index == index), None)
            if ev is not None and ev.valid:
                views[r.name] = DetectorClassView(ev.score, ev.z, ev.flagged, ev.role, ev.strength)
        zs = [v.z for v in views.values() if math.isfinite(v.z)]
        agreement = agreement_strength(views)
        own = any(v.flagged for v in views.values())
        # flagged by the agreement: the pair's summed evidence reaches the threshold where neither alone did
        by_agreement = not own and math.isfinite(agreement) and agreement >= AGREEMENT_THRESHOLD
        roles = {v.role for v in views.values() if v.flagged and v.role}
        if by_agreement:
            roles.add(AGREEMENT_ROLE)
        classes.append(
            ClassVerdict(
                index=index, label=label, flagged=own or by_agreement,
                score=max(zs) if zs else float("nan"), detectors=views, roles=tuple(sorted(roles)),
                agreement=agreement, by_agreement=by_agreement,
            )
        )
    flagged = tuple(c.index for c in classes if c.flagged)
    if not usable:
        return Verdict("inconclusive", None, (), tuple(classes), tuple(notes))
    model_score = max(float(r.model_score or 0.0) for r in usable)
    agreements = [c.agreement for c in classes if math.isfinite(c.agreement)]
    if agreements:  # the agreement's own score, 0.5 at its threshold (the detectors' logistic width)
        model_score = max(model_score, squash(max(agreements) / AGREEMENT_THRESHOLD, 1.0, width=0.25))
    status: VerdictStatus = "suspicious" if flagged else "clean"
    return Verdict(status, model_score, flagged, tuple(classes), tuple(notes))
