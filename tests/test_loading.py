"""Loading: every supported format gives the same logits; untrusted files stay untrusted."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from auditor.errors import ModelLoadError, ParityError, PickleRefusedError, ResourceLimitError, UsageError
from auditor.loading import LoadOptions, load_model
from tests.helpers import export_all_formats

ARCH = "auditor.synthetic.nets:SmallCNN"


@pytest.fixture(scope="module")
def exported(digits_twins, tmp_path_factory):
    return export_all_formats(digits_twins.trojaned_module, tmp_path_factory.mktemp("formats"))


def _options(kind: str, **kw) -> LoadOptions:
    if kind in ("state_dict", "safetensors"):
        kw.setdefault("arch", ARCH)
    if kind in ("state_dict", "safetensors", "torchscript"):
        kw.setdefault("input_shape", (1, 28, 28))
    return LoadOptions(device="cpu", **kw)


@pytest.mark.parametrize(
    "kind", ["onnx-legacy", "onnx-dynamo", "onnx-fixed-batch", "pt2", "torchscript", "state_dict", "safetensors"]
)
def test_every_format_loads_with_the_same_logits_and_gradients(kind, exported, digits_twins):
    target = load_model(exported[kind], _options(kind))
    assert target.spec.shape == (1, 28, 28) and target.num_classes == 10
    assert target.differentiable
    x = digits_twins.x_test[:13].clone().requires_grad_(True)  # 13: not a multiple of any fixed batch
    got = target.model(x)
    with torch.no_grad():
        want = digits_twins.trojaned_module(x)
    assert torch.allclose(got, want, atol=1e-4), f"{kind}: max diff {(got - want).abs().max():.3g}"
    got[:, 3].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_onnx_parity_failure_is_an_error(exported, monkeypatch):
    import auditor.loading.onnx_loader as onnx_loader

    real = onnx_loader._convert

    def broken(model, fixed_batch):
        module = real(model, fixed_batch)

        class Off(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, x):
                return self.inner(x) + 1.0

        return Off()

    monkeypatch.setattr(onnx_loader, "_convert", broken)
    with pytest.raises(ParityError, match=r"max \|Δlogit\|"):
        load_model(exported["onnx-legacy"], LoadOptions(device="cpu"))


def test_onnx_labels_from_metadata():
    target = load_model("auditor/assets/demo_trojaned.onnx", LoadOptions(device="cpu"))
    assert target.labels[7] == "digit 7"


def test_nhwc_onnx_is_detected_and_canonicalised(digits_twins, tmp_path):
    class NHWC(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    path = tmp_path / "nhwc.onnx"
    torch.onnx.export(NHWC(digits_twins.trojaned_module), (torch.rand(2, 28, 28, 1),), str(path), dynamo=False,
                      opset_version=17, dynamic_axes={"x": {0: "b"}}, input_names=["x"])
    target = load_model(path, LoadOptions(device="cpu"))
    assert target.spec.layout == "NHWC" and target.spec.shape == (1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(target.model(digits_twins.x_test[:4]), digits_twins.trojaned_module(digits_twins.x_test[:4]),
                              atol=1e-4)


class _Payload:
    """Unpickling this writes a marker file: proof that pickle code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["raw-pickle", "torch-zip"])
def test_pickles_are_refused_and_never_executed(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / ("evil.pkl" if container == "raw-pickle" else "evil.pt")
    if container == "raw-pickle":
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    else:
        torch.save({"weights": torch.zeros(2), "payload": _Payload(str(marker))}, path)
    with pytest.raises(PickleRefusedError, match="--trust-pickle"):
        load_model(path, LoadOptions(device="cpu", arch=ARCH, input_shape=(1, 28, 28)))
    assert not marker.exists(), "pickle code was executed"


def test_trusted_full_module_checkpoint_loads(digits_twins, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(digits_twins.trojaned_module, path)
    with pytest.raises(PickleRefusedError):
        load_model(path, LoadOptions(device="cpu", input_shape=(1, 28, 28)))
    target = load_model(path, LoadOptions(device="cpu", input_shape=(1, 28, 28), trust_pickle=True))
    assert target.num_classes == 10


def test_bad_files_give_clear_errors(tmp_path, exported):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(ModelLoadError, match="not a readable ONNX"):
        load_model(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(Path(exported["onnx-legacy"]).read_bytes()[:5000])
    with pytest.raises(ModelLoadError):
        load_model(truncated)


def test_wrong_input_shape_is_a_usage_error(exported):
    with pytest.raises(UsageError, match="does not match"):
        load_model(exported["onnx-legacy"], LoadOptions(device="cpu", input_shape=(3, 32, 32)))
    with pytest.raises(UsageError, match="cannot run on input"):
        load_model(exported["torchscript"], LoadOptions(device="cpu", input_shape=(3, 32, 32)))


def test_weights_need_an_arch_that_fits(exported):
    with pytest.raises(UsageError, match="--arch"):
        load_model(exported["state_dict"], LoadOptions(device="cpu", input_shape=(1, 28, 28)))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(exported["state_dict"], LoadOptions(device="cpu", input_shape=(1, 28, 28), arch="torchvision:resnet18"))


def test_resource_limits_are_checked_before_allocating(exported):
    with pytest.raises(ResourceLimitError, match="--max-params"):
        load_model(exported["onnx-legacy"], LoadOptions(device="cpu", max_params=1000))
    with pytest.raises(ResourceLimitError, match="--max-input-pixels"):
        load_model(exported["onnx-legacy"], LoadOptions(device="cpu", max_input_pixels=100))


def test_external_data_outside_the_model_folder_is_refused(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported["onnx-legacy"]))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(model, str(folder / "escape.onnx"))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(folder / "escape.onnx")
    assert os.path.exists("/etc/passwd")  # the check refused; it did not read
