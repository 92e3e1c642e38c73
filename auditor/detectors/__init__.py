"""Detectors: one module per method, all behind the contract in :mod:`auditor.detectors.base`.

Importing this package registers every built-in detector.
"""

from auditor.detectors import (
    diffusion,  # noqa: F401  (registers)
    flow_am,  # noqa: F401  (registers)
    max_margin,  # noqa: F401  (registers)
    neural_cleanse,  # noqa: F401  (registers)
    saliency,  # noqa: F401  (registers)
)
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
