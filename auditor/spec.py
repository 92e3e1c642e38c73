"""What the model consumes, described once, so detectors never guess.

Detectors always work in the *canonical* space: images are float32 ``(B, C, H, W)`` in ``[0, 1]``,
point clouds are float32 ``(B, N, 3)``. The model's own layout and normalisation are applied inside
:class:`auditor.target.CanonicalInput`, so a wrong ``--mean/--std`` is a visible option, not a silent
verdict flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "points"]
Layout = Literal["NCHW", "NHWC", "BN3", "B3N"]


@dataclass(frozen=True)
class InputSpec:
    """Canonical input description.

    ``shape`` excludes the batch: ``(C, H, W)`` for images, ``(N, 3)`` for point clouds.
    ``layout`` is the layout the *model* expects; detectors never see it.
    ``mean``/``std`` are the model's own normalisation, applied after mapping [0,1] pixels onto
    ``value_range``.
    """

    modality: Modality
    shape: tuple[int, ...]
    layout: Layout = "NCHW"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def channels(self) -> int:
        return self.shape[0] if self.modality == "image" else 3

    @property
    def height(self) -> int:
        return self.shape[1] if self.modality == "image" else 0

    @property
    def width(self) -> int:
        return self.shape[2] if self.modality == "image" else 0

    @property
    def num_points(self) -> int:
        return self.shape[0] if self.modality == "points" else 0

    def describe(self) -> str:
        dims = "×".join(str(d) for d in self.shape)
        norm = ""
        if self.mean is not None:
            norm = f", mean={list(self.mean)}, std={list(self.std or ())}"
        if self.value_range != (0.0, 1.0):
            norm += f", range={list(self.value_range)}"
        return f"{self.modality} {dims} (model layout {self.layout}{norm})"
