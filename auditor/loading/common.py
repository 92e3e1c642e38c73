"""Pieces shared by the format loaders: options, limits, batching, parity, labels."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from auditor.errors import DataError, ModelLoadError, ParityError, ResourceLimitError, UsageError
from auditor.spec import InputSpec
from auditor.text import safe_text

DEFAULT_MAX_INPUT_PIXELS = 3 * 1024 * 1024  # values per input (C·H·W or N·3): a 1024² RGB image
DEFAULT_MAX_PARAMS = 500_000_000
DEFAULT_MAX_CLASSES = 100_000


@dataclass(frozen=True)
class LoadOptions:
    """How to read a model file. Every field maps to a CLI option (and an ``AUDITOR_*`` variable)."""

    device: str = "auto"
    input_shape: tuple[int, ...] | None = None
    layout: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    value_range: tuple[float, float] = (0.0, 1.0)
    labels_file: str | None = None
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    trust_pickle: bool = False
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_params: int = DEFAULT_MAX_PARAMS
    max_classes: int = DEFAULT_MAX_CLASSES
    parity_rtol: float = 1e-3
    parity_atol: float = 1e-4
    parity_probes: int = 8
    seed: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA device is available")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda (got {name!r})")
    return torch.device(name)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_input_size(shape: Sequence[int], options: LoadOptions) -> None:
    values = math.prod(int(d) for d in shape)
    if values > options.max_input_pixels:
        raise ResourceLimitError(
            f"declared input {'×'.join(map(str, shape))} has {values:,} values per sample, above the limit "
            f"--max-input-pixels={options.max_input_pixels:,}"
        )


def check_param_count(count: int, options: LoadOptions) -> None:
    if count > options.max_params:
        raise ResourceLimitError(
            f"model declares {count:,} parameters, above the limit --max-params={options.max_params:,}"
        )


def infer_spec(shape: Sequence[int], options: LoadOptions) -> InputSpec:
    """Canonical :class:`InputSpec` from the model's per-sample input shape in *its own* layout.

    3-D per-sample shapes are images: NCHW unless the last dimension is 1 or 3 and the first is not
    (NHWC). 2-D shapes are point clouds: (N,3) → BN3, (3,N) → B3N. ``--layout`` overrides.
    """
    shape = tuple(int(d) for d in shape)
    layout = options.layout or guess_layout(shape)
    if layout == "NHWC" and len(shape) == 3:
        canonical = (shape[2], shape[0], shape[1])
    elif layout == "B3N" and len(shape) == 2:
        canonical = (shape[1], shape[0])
    else:
        canonical = shape
    return spec_from_canonical(canonical, layout, options)


def guess_layout(shape: Sequence[int]) -> str:
    if len(shape) == 3:
        return "NHWC" if shape[2] in (1, 3) and shape[0] not in (1, 3) else "NCHW"
    if len(shape) == 2:
        return "B3N" if shape[0] == 3 and shape[1] != 3 else "BN3"
    return "NCHW"


def spec_from_canonical(canonical: Sequence[int], layout: str, options: LoadOptions) -> InputSpec:
    """Validate a canonical shape ((C,H,W) or (N,3)) with a model layout and build the spec."""
    canonical = tuple(int(d) for d in canonical)
    if len(canonical) == 3:
        modality = "image"
        if layout not in ("NCHW", "NHWC"):
            raise UsageError(f"layout {layout} does not fit an image input of shape {canonical}")
    elif len(canonical) == 2:
        modality = "points"
        if layout not in ("BN3", "B3N"):
            raise UsageError(f"layout {layout} does not fit a point-cloud input of shape {canonical}")
        if canonical[1] != 3:
            raise UsageError(f"point-cloud input must have 3 coordinates per point, got shape {canonical}")
    else:
        raise UsageError(
            f"unsupported input shape {canonical} (without batch); auditor audits image (B,C,H,W) and "
            "point-cloud (B,N,3) classifiers"
        )
    if any(d <= 0 for d in canonical):
        raise UsageError(f"input shape {canonical} has unknown or zero dimensions: pass --input-shape")
    check_input_size(canonical, options)
    channels = canonical[0] if modality == "image" else 3
    for name, stat in (("--mean", options.mean), ("--std", options.std)):
        if stat is not None and len(stat) not in (1, channels):
            raise UsageError(f"{name} has {len(stat)} values but the model has {channels} channels")
    if options.std is not None and any(s == 0 for s in options.std):
        raise UsageError("--std values must be non-zero")
    return InputSpec(modality, canonical, layout, options.mean, options.std, options.value_range)  # type: ignore[arg-type]


def resolve_spec(declared: Sequence[int | None] | None, options: LoadOptions, what: str) -> InputSpec:
    """The spec from the file's declared per-sample shape (``None`` = unknown dim) and --input-shape.

    ``--input-shape`` is canonical ((C,H,W) or (N,3)); it must agree with every dimension the file fixes.
    """
    if options.input_shape is None:
        if declared is None or any(d is None for d in declared):
            raise ModelLoadError(f"{what} does not record a complete input shape ({_dims(declared)}): pass --input-shape, e.g. 3,32,32")
        return infer_spec([int(d) for d in declared], options)  # type: ignore[arg-type]
    canonical = tuple(options.input_shape)
    layout = options.layout
    if layout is None:
        layout = guess_layout(declared) if declared and all(d is not None for d in declared) else (
            "NCHW" if len(canonical) == 3 else "BN3")
    spec = spec_from_canonical(canonical, layout, options)
    if declared is not None:
        want = model_shape(spec)
        if len(want) != len(declared) or any(d is not None and d != w for d, w in zip(declared, want)):
            raise UsageError(f"--input-shape {','.join(map(str, canonical))} does not match the input {what} declares ({_dims(declared)})")
    return spec


def _dims(dims: Sequence[int | None] | None) -> str:
    if dims is None:
        return "none"
    return "×".join("?" if d is None else str(d) for d in dims)


def model_shape(spec: InputSpec) -> tuple[int, ...]:
    """Per-sample shape in the model's own layout."""
    s = spec.shape
    if spec.layout == "NHWC":
        return (s[1], s[2], s[0])
    if spec.layout == "B3N":
        return (s[1], s[0])
    return s


class FixedBatch(nn.Module):
    """Runs a model whose batch size is baked in (``batch``) on any batch: split, pad, concatenate.

    Gradients flow through, so detectors work unchanged on fixed-batch exports.
    """

    def __init__(self, model: nn.Module, batch: int):
        super().__init__()
        self.inner = model
        self.batch = int(batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], self.batch):
            chunk = x[i : i + self.batch]
            n = chunk.shape[0]
            if n < self.batch:
                pad = chunk[-1:].expand(self.batch - n, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            out = self.inner(chunk)
            if isinstance(out, (tuple, list)):
                out = out[0]
            outs.append(out[:n])
        return torch.cat(outs)


def probe_inputs(shape: Sequence[int], count: int, seed: int) -> np.ndarray:
    """Deterministic probes in the model's own layout: uniform [0,1], Gaussian, constants."""
    rng = np.random.default_rng(seed)
    half = max(1, count // 2)
    probes = [rng.random((half, *shape)), rng.normal(0.5, 0.5, (count - half, *shape))]
    return np.concatenate(probes).astype(np.float32)


def check_parity(
    reference: Callable[[np.ndarray], np.ndarray],
    converted: nn.Module,
    probes: np.ndarray,
    options: LoadOptions,
    what: str,
) -> float:
    """Max |Δlogit| between the reference runtime and the converted module; raises ParityError."""
    ref = np.asarray(reference(probes), dtype=np.float64).reshape(len(probes), -1)
    with torch.no_grad():
        got = converted(torch.from_numpy(probes)).detach().cpu().double().numpy().reshape(len(probes), -1)
    if ref.shape != got.shape:
        raise ParityError(f"{what}: converted model returns shape {got.shape[1:]} but {ref.shape[1:]} was expected")
    if not np.all(np.isfinite(ref)):
        return 0.0  # non-finite reference logits: nothing to compare; the detectors report them as invalid
    delta = float(np.max(np.abs(ref - got)))
    tol = options.parity_atol + options.parity_rtol * float(np.max(np.abs(ref)))
    if not delta <= tol:
        raise ParityError(
            f"{what}: converted model disagrees with the reference runtime: max |Δlogit| = {delta:.3g} "
            f"> tolerance {tol:.3g}"
        )
    return delta


def read_labels(path: str | None, metadata_labels: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read --labels {path}: {exc}") from None
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        if len(labels) != num_classes:
            raise DataError(f"--labels {path} has {len(labels)} labels but the model has {num_classes} classes")
    elif metadata_labels is not None and len(metadata_labels) == num_classes:
        labels = list(metadata_labels)
    else:
        labels = [str(i) for i in range(num_classes)]
    return tuple(safe_text(label) for label in labels)


def labels_from_metadata(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and len(value) <= DEFAULT_MAX_CLASSES:
        return [str(v) for v in value]
    return None
