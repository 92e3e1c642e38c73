"""Helpers for tests: export one trained model in every supported file format."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def export_all_formats(module: torch.nn.Module, folder: Path, shape=(1, 28, 28)) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    example = torch.rand(2, *shape)
    paths: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = folder / "legacy.onnx"
        torch.onnx.export(module, (example,), str(p), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
        paths["onnx-legacy"] = p
        p = folder / "fixed_batch.onnx"
        torch.onnx.export(module, (example[:1],), str(p), dynamo=False, opset_version=17)
        paths["onnx-fixed-batch"] = p
        p = folder / "dynamo.onnx"
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(module, (example,), str(p), dynamo=True, dynamic_shapes={"x": {0: batch}})
        paths["onnx-dynamo"] = p
        p = folder / "model.pt2"
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}}), str(p))
        paths["pt2"] = p
        p = folder / "model.torchscript.pt"
        torch.jit.trace(module, example).save(str(p))
        paths["torchscript"] = p
    p = folder / "weights.pt"
    torch.save(module.state_dict(), p)
    paths["state_dict"] = p
    from safetensors.torch import save_file

    p = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(p))
    paths["safetensors"] = p
    return paths
