"""The thing being audited: a torch module in canonical input space plus facts about it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from auditor.spec import InputSpec


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the model file (reported verbatim in report.json's ``model`` block)."""

    path: str
    sha256: str
    format: str
    notes: tuple[str, ...] = ()


class CanonicalInput(nn.Module):
    """Wraps a model so it takes canonical input (see :mod:`auditor.spec`) and returns logits (B, K).

    Applies, in order: value range mapping, per-channel mean/std, and the layout permutation the
    model expects. Keeping this in a module (not in detectors) means every detector sees the same
    preprocessing and gradients flow through it.
    """

    def __init__(self, model: nn.Module, spec: InputSpec):
        super().__init__()
        self.model = model
        self.spec = spec
        lo, hi = spec.value_range
        self.register_buffer("_lo", torch.tensor(float(lo)), persistent=False)
        self.register_buffer("_scale", torch.tensor(float(hi - lo)), persistent=False)
        shape = (1, -1, 1, 1) if spec.modality == "image" else (1, 1, -1)
        mean = torch.tensor(spec.mean if spec.mean is not None else (0.0,), dtype=torch.float32)
        std = torch.tensor(spec.std if spec.std is not None else (1.0,), dtype=torch.float32)
        self.register_buffer("_mean", mean.view(shape), persistent=False)
        self.register_buffer("_std", std.view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * self._scale + self._lo - self._mean) / self._std
        if self.spec.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        elif self.spec.layout == "B3N":
            x = x.transpose(1, 2)
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)


@dataclass(frozen=True, eq=False)
class ModelTarget:
    """What a detector audits.

    ``model`` maps canonical input to logits and is in eval mode with frozen parameters.
    ``differentiable`` is False for runtimes without gradients (e.g. an onnxruntime fallback);
    detectors that need gradients then skip with a reason.
    """

    model: nn.Module
    spec: InputSpec
    labels: tuple[str, ...]
    info: ModelInfo
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    differentiable: bool = True

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        spec: InputSpec,
        labels: tuple[str, ...] | None = None,
        *,
        device: torch.device | str = "cpu",
        name: str = "<in-memory>",
    ) -> ModelTarget:
        """Wrap an in-memory module (tests, benchmarks, the library API). Counts classes if no labels."""
        device = torch.device(device)
        wrapped = CanonicalInput(module, spec).to(device).eval()
        for p in wrapped.parameters():
            p.requires_grad_(False)
        if labels is None:
            with torch.no_grad():
                k = wrapped(torch.zeros((1, *spec.shape), device=device)).shape[1]
            labels = tuple(str(i) for i in range(k))
        return cls(wrapped, spec, tuple(labels), ModelInfo(name, "", "torch-module"), device)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def label(self, index: int) -> str:
        return self.labels[index]

    def logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits without gradients, in batches (for probes and evaluations)."""
        with torch.no_grad():
            parts = [self.model(x[i : i + batch_size].to(self.device)) for i in range(0, len(x), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.num_classes)


@dataclass(frozen=True, eq=False)
class SampleData:
    """Optional clean samples (``--data``), already in canonical space on CPU."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; restores the previous state."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        model.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)
