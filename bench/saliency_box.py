"""Planted-trigger check for the `saliency` class maps (issue 4): how much of the target class's map
lies inside the true trigger box, relative to the box's share of the image.

    python bench/saliency_box.py [--zoo bench/zoo] [--clean-per-model 2]

For every scored zoo member with a fixed patch trigger (``trigger_box`` in the manifest), runs the
detector with its defaults (data-free, seed 0, one thread) and reads the target class's map evidence
images — ``--kind class_map`` (the refined ℓ2 universal map, the default), ``compact_map`` (the mask
ladder) or ``location_map`` (the window scan), or a comma list of them from the same runs: box share =
map mass inside the box / total map mass, enrichment = box share / box area share. The null: clean
members of the same domain, read at the same box and class index.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import RunContext, create  # noqa: E402
from auditor.loading import load_model  # noqa: E402


def box_share(pixels: np.ndarray, box: list[int]) -> tuple[float, float]:
    m = np.abs(pixels if pixels.ndim == 2 else pixels.sum(axis=-1))
    top, left, bottom, right = box
    inside = float(m[top:bottom, left:right].sum())
    area = (bottom - top) * (right - left) / m.size
    share = inside / max(float(m.sum()), 1e-12)
    return share, share / area


def class_map(zoo: Path, member: dict, cls: int, cache: dict, kind: str = "class_map") -> np.ndarray:
    if member["id"] not in cache:
        target = load_model(str(zoo / member["file"]))
        result = create("saliency").run(target, RunContext(seed=0))
        cache[member["id"]] = {c.index: c for c in result.classes}
    evidence = cache[member["id"]][cls]
    return next(img.pixels for img in evidence.images if img.kind == kind)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=Path(__file__).resolve().parent / "zoo")
    ap.add_argument("--clean-per-model", type=int, default=2)
    ap.add_argument("--kind", default="class_map",
                    help="evidence image(s) read, comma-separated: class_map (default), compact_map, location_map")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    members = [m for m in json.loads((a.zoo / "manifest.json").read_text())["members"] if m["scored"]]
    cache: dict = {}
    kinds = [k.strip() for k in a.kind.split(",") if k.strip()]
    rows: dict[str, list] = {kind: [] for kind in kinds}
    started = time.monotonic()
    for m in members:
        if not m["trojaned"] or not m.get("trigger_box") or len(m["target_classes"]) != 1:
            continue
        t, box = m["target_classes"][0], m["trigger_box"]
        clean = [c for c in members if c["domain"] == m["domain"] and not c["trojaned"] and not c["spurious"]]
        for kind in kinds:
            share, enrich = box_share(class_map(a.zoo, m, t, cache, kind), box)
            null = [box_share(class_map(a.zoo, c, t, cache, kind), box)[1] for c in clean[: a.clean_per_model]]
            rows[kind].append((m["id"], box, t, share, enrich, float(np.median(null))))
            print(f"| {kind} | {m['id']} | {box} | {t} | {share:.3f} | {enrich:.1f}× | {np.median(null):.1f}× |", flush=True)
    for kind in kinds:
        print(f"\n{kind}: median enrichment: trojaned {np.median([r[4] for r in rows[kind]]):.1f}×, "
              f"clean null {np.median([r[5] for r in rows[kind]]):.1f}×")
    print(f"{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
