"""PyTorch formats: torch.export programs (.pt2), TorchScript, weights (+ --arch), trusted pickles.

Untrusted by default: weights are read with ``torch.load(weights_only=True)`` (a restricted unpickler
that refuses arbitrary callables) or safetensors; a file that needs full unpickling (a pickled
``nn.Module``) is refused unless the user passes ``--trust-pickle``.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from auditor.errors import ModelLoadError, PickleRefusedError, UsageError
from auditor.loading.common import FixedBatch, LoadOptions, check_param_count, model_shape, resolve_spec

_log = logging.getLogger("auditor")

PICKLE_HELP = (
    "loading it would execute Python code stored in the file (pickle). Re-run with --trust-pickle only if "
    "you trust where the file came from, or export the model to ONNX, .pt2 (torch.export) or a state_dict"
)


def sniff(path: Path) -> str:
    """File kind from content, not the name: onnx | pt2 | torchscript | torch-zip | safetensors | pickle | unknown."""
    with path.open("rb") as f:
        head = f.read(16)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if head[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path.name} is a damaged zip archive ({exc})") from None
        if any(n.endswith("/archive_format") or n.endswith("models/model.json") for n in names):
            return "pt2"
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        return "unknown"
    if path.suffix.lower() == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


class ExportedModule(nn.Module):
    """An exported program's module. Its train/eval mode is frozen at export time, so mode switches
    must not recurse into it (torch raises on ``eval()``)."""

    def __init__(self, graph_module: nn.Module):
        super().__init__()
        self.graph_module = graph_module

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def load_pt2(path: Path, options: LoadOptions, device: torch.device):
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path.name} is not a loadable torch.export program ({type(exc).__name__}: {_short(exc)})") from None
    module = program.module()
    check_param_count(sum(p.numel() for p in module.parameters()), options)
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelLoadError(f"{path.name}: expected one user input, found {len(placeholders)}")
    val = placeholders[0].meta.get("val")
    declared = None
    batch = None
    if val is not None:
        dims = [int(d) if isinstance(d, int) else None for d in val.shape]
        declared, batch = dims[1:], dims[0]
    spec = resolve_spec(declared, options, path.name)
    module = ExportedModule(module.to(device))
    if batch is not None:
        module = FixedBatch(module, batch)
    return module, spec, None, ["torch.export program"], True


def load_torchscript(path: Path, options: LoadOptions, device: torch.device):
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise ModelLoadError(f"{path.name} is not a loadable TorchScript archive ({type(exc).__name__}: {_short(exc)})") from None
    check_param_count(sum(p.numel() for p in module.parameters()), options)
    spec = resolve_spec(None, options, f"{path.name} (TorchScript)")
    return module, spec, None, ["TorchScript archive"], True


def load_weights(path: Path, kind: str, options: LoadOptions, device: torch.device):
    """A state_dict (.pt/.pth, weights only) or .safetensors, with --arch building the module."""
    obj = _read_weights(path, kind, options)
    notes = []
    if isinstance(obj, nn.Module):
        if not options.trust_pickle:  # unreachable: weights_only refuses modules; kept as a guard
            raise PickleRefusedError(f"{path.name} holds a pickled nn.Module; {PICKLE_HELP}")
        module = obj
        notes.append("pickled nn.Module loaded with --trust-pickle")
    else:
        state = _state_dict_of(obj, path)
        if not options.arch:
            raise UsageError(f"{path.name} holds weights only: pass --arch (e.g. torchvision:resnet18 or my_pkg.models:make_net)")
        check_param_count(sum(t.numel() for t in state.values() if hasattr(t, "numel")), options)
        module = build_arch(options.arch, options.arch_kwargs)
        missing, unexpected = _load_state(module, state)
        if missing or unexpected:
            raise ModelLoadError(
                f"weights do not fit --arch {options.arch}: {len(missing)} missing key(s) {missing[:3]}, "
                f"{len(unexpected)} unexpected key(s) {unexpected[:3]}"
            )
        notes.append(f"weights ({kind}) loaded into --arch {options.arch}")
    check_param_count(sum(p.numel() for p in module.parameters()), options)
    declared = _torchvision_default_shape(options.arch) if options.input_shape is None else None
    spec = resolve_spec(declared, options, path.name)
    return module.to(device).eval(), spec, None, notes, True


def _read_weights(path: Path, kind: str, options: LoadOptions):
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path.name} is not a readable safetensors file ({_short(exc)})") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc) and "Unsupported" not in str(exc):
            raise ModelLoadError(f"{path.name} is not a readable PyTorch file ({_short(exc)})") from None
        if not options.trust_pickle:
            raise PickleRefusedError(f"{path.name} contains pickled Python objects; {PICKLE_HELP}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path.name} is not a readable PyTorch file ({type(exc).__name__}: {_short(exc)})") from None
    _log.warning("--trust-pickle: unpickling %s with full code execution", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path.name} could not be unpickled ({type(exc).__name__}: {_short(exc)})") from None


def _state_dict_of(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ModelLoadError(f"{path.name} does not contain a state_dict (found {type(obj).__name__})")


def _load_state(module: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    own = module.state_dict()
    # checkpoints saved from DataParallel / torch.compile prefix every key
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix):]: v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def build_arch(spec: str, kwargs: dict) -> nn.Module:
    """``torchvision:NAME`` or ``package.module:factory`` → an nn.Module (random weights, no download)."""
    if ":" not in spec:
        raise UsageError(f"--arch must look like torchvision:resnet18 or my_pkg.models:make_net (got {spec!r})")
    where, name = spec.split(":", 1)
    if where == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except Exception as exc:
            raise UsageError(f"--arch {spec}: {_short(exc)}") from None
    try:
        factory = getattr(importlib.import_module(where), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--arch {spec}: cannot import {name!r} from {where!r} ({_short(exc)})") from None
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise UsageError(f"--arch {spec}: building the model failed ({type(exc).__name__}: {_short(exc)})") from None
    if not isinstance(module, nn.Module):
        raise UsageError(f"--arch {spec} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _torchvision_default_shape(arch: str | None):
    if arch and arch.startswith("torchvision:"):
        return [3, 224, 224]
    return None


def probe_forward(module: nn.Module, spec, device: torch.device, what: str) -> int:
    """Run one batch of two zeros; returns the class count or raises a clear error."""
    x = torch.zeros((2, *model_shape(spec)), device=device)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:
        raise UsageError(f"{what} cannot run on input {'×'.join(map(str, model_shape(spec)))} "
                         f"({type(exc).__name__}: {_short(exc)}); check --input-shape / --layout") from None
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != 2:
        raise ModelLoadError(f"{what} returns {getattr(out, 'shape', type(out).__name__)}, not logits (batch, classes)")
    return int(out[0].numel())


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("…" if len(text) > limit else "")
