"""Pictures for reports: arrays in, PNG bytes / data URIs out (no files, no global state)."""

from __future__ import annotations

import base64
import io

import numpy as np


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """(H,W) or (H,W,3) float in [0,1] (or uint8) → uint8, NaN-safe."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(pixels: np.ndarray, min_side: int = 112) -> bytes:
    """Encode as PNG, upscaled with nearest neighbour so small inputs stay legible."""
    from PIL import Image

    arr = to_uint8(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    side = min(img.size)
    if 0 < side < min_side:
        factor = int(np.ceil(min_side / side))
        img = img.resize((img.size[0] * factor, img.size[1] * factor), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_data_uri(pixels: np.ndarray, min_side: int = 112) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels, min_side)).decode("ascii")


def render_points(points: np.ndarray, view_size: int = 96, bound: float | None = None) -> np.ndarray:
    """A point cloud (N, 3) as three orthographic views side by side (x–y, x–z, y–z): (H, W, 3) in [0, 1].

    A plain deterministic numpy rasteriser: white background, each point a 2×2 dot shaded by its depth
    along the hidden axis (near = dark), drawn far-to-near so near points stay visible. ``bound`` fixes
    the half-width of every view (default: the cloud's largest absolute coordinate, at least 1e-6), so
    clouds in the unit cube keep their scale; non-finite points are dropped.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    gap = 4
    canvas = np.ones((view_size, 3 * view_size + 2 * gap, 3))
    if pts.size == 0:
        return canvas
    half = float(bound) if bound is not None else max(float(np.abs(pts).max()), 1e-6)
    scale = (view_size - 3) / (2.0 * half)
    for v, (a, b, depth) in enumerate(((0, 1, 2), (0, 2, 1), (1, 2, 0))):
        view = canvas[:, v * (view_size + gap): v * (view_size + gap) + view_size]
        view[[0, -1], :, :] = 0.8  # thin frame so the three panels read as separate views
        view[:, [0, -1], :] = 0.8
        cols = np.clip(((pts[:, a] + half) * scale).astype(int) + 1, 1, view_size - 3)
        rows = np.clip(((half - pts[:, b]) * scale).astype(int) + 1, 1, view_size - 3)
        d = (pts[:, depth] + half) / (2 * half)  # 0 = far … 1 = near
        order = np.argsort(d, kind="stable")
        shade = np.clip(0.75 - 0.65 * d, 0.0, 1.0)
        colour = np.stack([shade * 0.4, shade * 0.6, 0.35 + 0.6 * shade], axis=1)  # dark blue → light blue
        for dr in (0, 1):
            for dc in (0, 1):
                view[rows[order] + dr, cols[order] + dc] = colour[order]
    return canvas
