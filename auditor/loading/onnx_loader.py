"""ONNX: validate, simplify, convert to a differentiable torch module, and check parity with onnxruntime.

Pipeline: ``onnx.load`` (external data only from inside the model's folder) → ``onnx.checker`` →
``onnxsim.simplify`` → ``onnx2pytorch.ConvertModel``. ``onnx2torch`` is not used: it fails on current
exporters (opset ≥ 18). When conversion fails, the model still runs through onnxruntime without
gradients, and gradient-based detectors are skipped with a reason.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from auditor.errors import ModelLoadError
from auditor.loading.common import (
    FixedBatch,
    LoadOptions,
    check_param_count,
    check_parity,
    labels_from_metadata,
    model_shape,
    probe_inputs,
    resolve_spec,
)

_log = logging.getLogger("auditor")


class OnnxRuntimeModule(nn.Module):
    """onnxruntime behind a torch module: forward only, no gradients (a fallback, never silent)."""

    def __init__(self, session, input_name: str, batch: int | None):
        super().__init__()
        self.session = session
        self.input_name = input_name
        self.batch = batch

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.batch is None:
            return self.session.run(None, {self.input_name: x})[0]
        outs = []
        for i in range(0, len(x), self.batch):
            chunk = x[i : i + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)])
            outs.append(self.session.run(None, {self.input_name: chunk})[0][:n])
        return np.concatenate(outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run_numpy(x.detach().cpu().numpy())
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(len(out), -1)).to(x.device)


def _load_proto(path: Path):
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path.name} is not a readable ONNX file ({type(exc).__name__}: {_short(exc)})") from None
    folder = path.resolve().parent
    external = [t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(folder):
            raise ModelLoadError(
                f"{path.name}: external data {location!r} for tensor {tensor.name!r} points outside the model's folder; refused"
            )
        if not target.is_file():
            raise ModelLoadError(f"{path.name}: external data file {location!r} is missing")
    return model, folder, bool(external)


def _all_tensors(model):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _declared_params(model) -> int:
    return sum(math.prod(int(d) for d in t.dims) for t in model.graph.initializer)


def _graph_input(model):
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelLoadError(f"expected a model with one input tensor, found {len(inputs)}: {[i.name for i in inputs]}")
    dims = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    return inputs[0].name, dims


def load_onnx(path: Path, options: LoadOptions, device: torch.device):
    """Returns (module in the model's own layout, spec, metadata labels, notes, differentiable)."""
    import onnx

    model, folder, has_external = _load_proto(path)
    check_param_count(_declared_params(model), options)
    input_name, dims = _graph_input(model)
    if not dims:
        raise ModelLoadError(f"{path.name}: the input {input_name!r} declares no shape")
    spec = resolve_spec(dims[1:], options, f"{path.name}'s input {input_name!r}")
    if has_external:
        onnx.load_external_data_for_model(model, str(folder))
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"{path.name} fails the ONNX checker: {_short(exc)}") from None
    fixed_batch = dims[0]
    labels = labels_from_metadata(next((p.value for p in model.metadata_props if p.key == "labels"), None))
    notes: list[str] = []
    reference = _ort_module(model, input_name, fixed_batch)
    probes = probe_inputs(model_shape(spec), options.parity_probes, options.seed)
    try:
        ref_out = reference.run_numpy(probes)
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: onnxruntime cannot run the model ({_short(exc)})") from None
    try:
        converted = _convert(model, fixed_batch)
    except Exception as exc:  # conversion gaps are common; fall back without gradients, loudly
        _log.debug("onnx2pytorch conversion failed", exc_info=True)
        notes.append(f"ONNX→torch conversion failed ({type(exc).__name__}: {_short(exc)}); running on onnxruntime "
                     "without gradients, so gradient-based detectors are skipped")
        return reference, spec, labels, notes, False
    delta = check_parity(lambda x: ref_out, converted, probes, options, f"{path.name}")
    notes.append(f"converted with onnxsim + onnx2pytorch; parity vs onnxruntime max |Δlogit| = {delta:.2g} on "
                 f"{len(probes)} probes")
    if fixed_batch is not None:
        notes.append(f"fixed batch size {fixed_batch} in the file: inputs are run in chunks of {fixed_batch}")
    return converted.to(device), spec, labels, notes, True


def _ort_module(model, input_name: str, fixed_batch: int | None) -> OnnxRuntimeModule:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime refuses the model ({_short(exc)})") from None
    return OnnxRuntimeModule(session, input_name, fixed_batch)


def _convert(model, fixed_batch: int | None) -> nn.Module:
    from onnx2pytorch import ConvertModel
    from onnxsim import simplify

    try:
        simplified, ok = simplify(model)
        if not ok:
            simplified = model
    except Exception:
        _log.debug("onnxsim.simplify failed; converting the original graph", exc_info=True)
        simplified = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = ConvertModel(simplified, experimental=fixed_batch is None)
    module.eval()
    if fixed_batch is not None:
        module = FixedBatch(module, fixed_batch)
    return module


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("…" if len(text) > limit else "")
