"""Load a model file safely into a :class:`~auditor.target.ModelTarget` (canonical input space).

Formats: ONNX (.onnx), torch.export programs (.pt2), TorchScript archives, weights (.pt/.pth
state_dict or .safetensors) with ``--arch``, and — only with ``--trust-pickle`` — pickled modules.
The file kind is sniffed from its content, not trusted from its name.
"""

from __future__ import annotations

from pathlib import Path

from auditor.errors import AuditorError, ModelLoadError, PickleRefusedError, ResourceLimitError
from auditor.loading.common import LoadOptions, read_labels, resolve_device, sha256_of
from auditor.loading.torch_loader import PICKLE_HELP, probe_forward, sniff
from auditor.target import CanonicalInput, ModelInfo, ModelTarget

__all__ = ["LoadOptions", "load_model"]


def load_model(path: str | Path, options: LoadOptions | None = None) -> ModelTarget:
    """Read, validate and wrap a model. Raises :class:`~auditor.errors.AuditorError` subclasses only.

    Anything unexpected from the parsing libraries on a hostile or damaged file becomes a
    :class:`~auditor.errors.ModelLoadError` that names the file and the problem.
    """
    options = options or LoadOptions()
    try:
        return _load(Path(path), options)
    except AuditorError:
        raise
    except RecursionError:
        raise ModelLoadError(f"{Path(path).name}: structure nested too deeply to load") from None
    except MemoryError:
        raise ResourceLimitError(f"{Path(path).name}: loading ran out of memory") from None
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        raise ModelLoadError(f"{Path(path).name} could not be loaded ({type(exc).__name__}: {text})") from exc


def _load(path: Path, options: LoadOptions) -> ModelTarget:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"not a regular file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path.name} is empty")
    device = resolve_device(options.device)
    kind = sniff(path)
    if kind == "onnx":
        from auditor.loading.onnx_loader import load_onnx

        module, spec, meta_labels, notes, differentiable = load_onnx(path, options, device)
    elif kind == "pt2":
        from auditor.loading.torch_loader import load_pt2

        module, spec, meta_labels, notes, differentiable = load_pt2(path, options, device)
    elif kind == "torchscript":
        from auditor.loading.torch_loader import load_torchscript

        module, spec, meta_labels, notes, differentiable = load_torchscript(path, options, device)
    elif kind in ("torch-zip", "safetensors"):
        from auditor.loading.torch_loader import load_weights

        module, spec, meta_labels, notes, differentiable = load_weights(path, kind, options, device)
    elif kind == "pickle":
        if not options.trust_pickle:
            raise PickleRefusedError(f"{path.name} is a pickle file; {PICKLE_HELP}")
        from auditor.loading.torch_loader import load_weights

        module, spec, meta_labels, notes, differentiable = load_weights(path, "torch-zip", options, device)
    else:
        raise ModelLoadError(
            f"{path.name}: unrecognised model format (expected .onnx, .pt2, TorchScript, .pt/.pth state_dict or .safetensors)"
        )
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    num_classes = probe_forward(module, spec, device, path.name)
    if num_classes < 2:
        raise ModelLoadError(f"{path.name} outputs {num_classes} value(s) per input; a classifier needs at least 2 classes")
    if num_classes > options.max_classes:
        raise ModelLoadError(f"{path.name} outputs {num_classes:,} classes, above the limit of {options.max_classes:,}")
    labels = read_labels(options.labels_file, meta_labels, num_classes)
    wrapped = CanonicalInput(module, spec).to(device).eval()
    info = ModelInfo(path=str(path), sha256=sha256_of(path), format=kind, notes=tuple(notes))
    return ModelTarget(wrapped, spec, labels, info, device, differentiable)
