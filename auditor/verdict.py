"""Fuse per-detector evidence into one verdict.

Rules (documented in the README, part of the public contract):
- a class is flagged when at least one detector that ran flags it (each detector applies its own
  calibrated statistic and threshold; ``--threshold`` overrides it);
- ``model_score`` is the largest ``model_score`` among detectors that ran (each is in [0,1] and
  monotone in its evidence), so the fused score is monotone in every detector's evidence;
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

VerdictStatus = Literal["clean", "suspicious", "inconclusive"]


@dataclass(frozen=True)
class DetectorClassView:
    score: float
    z: float
    flagged: bool
    role: str = ""


@dataclass(frozen=True)
class ClassVerdict:
    index: int
    label: str
    flagged: bool
    score: float  # strongest robust z over the detectors that ran (NaN when none did)
    detectors: Mapping[str, DetectorClassView]
    roles: tuple[str, ...] = ()

    @property
    def flagged_by(self) -> tuple[str, ...]:
        return tuple(name for name, view in self.detectors.items() if view.flagged)


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
                parts.append(f"class {i} ({labels[i]!r}) flagged by {', '.join(c.flagged_by)}")
            return "; ".join(parts)
        if self.status == "clean":
            return "no class flagged by any detector that ran"
        return "; ".join(self.notes) or "no detector produced valid evidence"


def _valid(result: DetectorResult) -> bool:
    return result.status == "ok" and any(c.valid for c in result.classes)


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
                views[r.name] = DetectorClassView(ev.score, ev.z, ev.flagged, ev.role)
        zs = [v.z for v in views.values() if math.isfinite(v.z)]
        classes.append(
            ClassVerdict(
                index=index, label=label, flagged=any(v.flagged for v in views.values()),
                score=max(zs) if zs else float("nan"), detectors=views,
                roles=tuple(sorted({v.role for v in views.values() if v.flagged and v.role})),
            )
        )
    flagged = tuple(c.index for c in classes if c.flagged)
    if not usable:
        return Verdict("inconclusive", None, (), tuple(classes), tuple(notes))
    model_score = max(float(r.model_score or 0.0) for r in usable)
    status: VerdictStatus = "suspicious" if flagged else "clean"
    return Verdict(status, model_score, flagged, tuple(classes), tuple(notes))
