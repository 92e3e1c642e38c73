"""Detectors: one module per method, all behind the contract in :mod:`auditor.detectors.base`.

Importing this package registers every built-in detector.
"""

from auditor.detectors import max_margin  # noqa: F401  (registers)
from auditor.detectors.base import (
    ClassEvidence,
    Detector,
    DetectorInfo,
    DetectorResult,
    EvidenceImage,
    Findings,
    RunContext,
    create,
    register,
    registered,
)

__all__ = [
    "ClassEvidence", "Detector", "DetectorInfo", "DetectorResult", "EvidenceImage", "Findings",
    "RunContext", "create", "register", "registered",
]
