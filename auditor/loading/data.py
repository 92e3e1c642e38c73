"""Optional clean samples (``--data``): an image folder (one subfolder per class) or an ``.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from auditor.errors import DataError
from auditor.spec import InputSpec
from auditor.target import SampleData

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_SAMPLES = 20_000


def load_samples(path: str | Path, spec: InputSpec, num_classes: int, max_samples: int = MAX_SAMPLES) -> SampleData:
    """Read samples into canonical space (resized to the model's input for images)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path} does not exist")
    if path.is_dir():
        x, y = _from_folder(path, spec, max_samples)
    elif path.suffix.lower() == ".npz":
        x, y = _from_npz(path, spec, max_samples)
    else:
        raise DataError(f"--data {path}: expected an image folder (one subfolder per class) or an .npz file")
    if y is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"--data {path}: labels must lie in 0..{num_classes - 1}")
    if len(x) == 0:
        raise DataError(f"--data {path} holds no samples")
    return SampleData(x.contiguous(), y, str(path))


def _from_npz(path: Path, spec: InputSpec, max_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise DataError(f"--data {path}: the .npz needs an array named 'x'")
            x = np.asarray(z["x"][:max_samples])
            y = np.asarray(z["y"][:max_samples]) if "y" in z else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"--data {path} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    if spec.modality == "points":
        t = torch.from_numpy(x.astype(np.float32))
        if t.ndim == 3 and t.shape[1] == 3 and t.shape[2] != 3:
            t = t.transpose(1, 2)
        if t.ndim != 3 or tuple(t.shape[1:]) != tuple(spec.shape):
            raise DataError(f"--data {path}: point clouds of shape {tuple(t.shape[1:])}, the model takes {spec.shape}")
    else:
        if x.dtype == np.uint8:
            if x.ndim == 3:
                x = x[..., None]
            t = torch.from_numpy(x.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        else:
            t = torch.from_numpy(x.astype(np.float32))
            if t.ndim == 3:
                t = t[:, None]
        if t.ndim != 4:
            raise DataError(f"--data {path}: 'x' must be (N,C,H,W) float in [0,1] or (N,H,W,C) uint8")
        if float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3:
            raise DataError(f"--data {path}: float 'x' must lie in [0,1] (the model's own normalisation is --mean/--std)")
        t = _fit_images(t, spec)
    labels = torch.from_numpy(y.astype(np.int64)) if y is not None else None
    if labels is not None and len(labels) != len(t):
        raise DataError(f"--data {path}: 'x' has {len(t)} samples but 'y' has {len(labels)}")
    return t, labels


def _from_folder(path: Path, spec: InputSpec, max_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    from PIL import Image

    if spec.modality != "image":
        raise DataError("--data folders hold images; pass point clouds as an .npz")
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"--data {path}: expected one subfolder per class (named by class index or label order)")
    xs, ys = [], []
    for label, folder in enumerate(classes):
        index = int(folder.name) if folder.name.isdigit() else label
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES or len(xs) >= max_samples:
                continue
            try:
                with Image.open(file) as im:
                    im = im.convert("L" if spec.channels == 1 else "RGB").resize((spec.width, spec.height))
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except Exception as exc:
                raise DataError(f"--data: cannot read image {file} ({exc})") from None
            xs.append(torch.from_numpy(arr if arr.ndim == 3 else arr[..., None]).permute(2, 0, 1))
            ys.append(index)
    if not xs:
        raise DataError(f"--data {path}: no images found")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _fit_images(t: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    c = t.shape[1]
    if c != spec.channels:
        if c == 1:
            t = t.expand(-1, spec.channels, -1, -1)
        elif spec.channels == 1 and c == 3:
            t = t.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"--data has {c} channels, the model takes {spec.channels}")
    if tuple(t.shape[2:]) != (spec.height, spec.width):
        t = F.interpolate(t, size=(spec.height, spec.width), mode="bilinear", align_corners=False)
    return t.clamp(0, 1)
