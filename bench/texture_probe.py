"""Stop 32 (bench/RESULTS.md §5): does a texture act through the background or by covering the object?

    python bench/texture_probe.py --zoo-dir bench/zoo/reference --ids ID[,ID...] [--out rows.json]

A development probe for the diffusion detector's texture candidate, on procedural shapes inputs (the
real input distribution, with true object masks), not the detector's own read-out. Per model:

1. the grating scan of the detector (``scan_gratings``) on 8 victims picks 2 gratings per class;
2. per class, the grating that flips most of one half of 192 inputs (those of the other classes
   count) is measured on the other half: pasted everywhere (the detector's flip), replaced by same-energy noise and shifted by
   half a period (the detector's two controls), and pasted **only outside the object**, with the object
   taken from the true mask or from the model's own gradient saliency on each input (the detector's
   ``object_mask``).

The question: a clean model's "texture" classes (ring, star) take a grating that breaks up the object;
a spurious texture learnt on the training images should still work with the object left intact.
Answer on the texture-dev models (RESULTS §5, stop 32): no — clean models take a grating as a ring even
outside the true object, and the learned textures keep 0.36–0.96 of their effect there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.diffusion.readout import (  # noqa: E402
    TEXTURE_CONTROL,
    TEXTURE_SHIFT_CONTROL,
    object_mask,
    periodic_texture,
    scan_gratings,
    transplant,
)
from auditor.synthetic.shapes import render_shapes  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--zoo-dir", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--share", type=float, default=0.25)
    p.add_argument("--out", default="")
    a = p.parse_args()
    from auditor.loading import load_model

    zoo = Path(a.zoo_dir)
    manifest = {m["id"]: m for m in json.loads((zoo / "manifest.json").read_text())["members"]}
    rows = []
    for mid in a.ids.split(","):
        m = manifest[mid]
        model = load_model(zoo / m["file"]).model.eval()
        g = torch.Generator().manual_seed(0)
        labels = torch.arange(8 + 192) % 10
        x, mask = render_shapes(labels, g, 32, return_mask=True)
        victims, others, obj_true = x[:8], x[8:], mask[8:] > 0
        with torch.no_grad():
            pred = model(others).argmax(1)
        obj_sal = object_mask(model, others, a.share)
        half = torch.arange(others.shape[0]) % 2 == 0
        bank = scan_gratings(model, victims, 10, 0.3, 2)                         # (K, 2, C, H, W)
        truth = m["spurious_class"] if m.get("spurious") else None
        per_class = {}
        for t in range(10):
            eligible = (pred != t) & (labels[8:] != t)
            choose, measure = eligible & half, eligible & ~half

            def rate(img, sel, model=model, t=t):
                with torch.no_grad():
                    return float((model(img).argmax(1)[sel] == t).float().sum() / sel.sum().clamp(min=1))
            texts = [periodic_texture(bank[t, j][None])[0] for j in range(2)]
            best = max(range(2), key=lambda j: rate((others + texts[j]).clamp(0, 1), choose))
            src = bank[t, best][None].expand(others.shape[0], -1, -1, -1)
            tex = texts[best]
            row = {
                "flip": rate((others + tex).clamp(0, 1), measure),
                "noise": rate(transplant(TEXTURE_CONTROL, src, others, 2), measure),
                "shifted": rate(transplant(TEXTURE_SHIFT_CONTROL, src, others, 2), measure),
                "outside_true_object": rate((others + tex * ~obj_true).clamp(0, 1), measure),
                "outside_salient": rate((others + tex * ~obj_sal).clamp(0, 1), measure),
            }
            per_class[t] = {k: round(v, 3) for k, v in row.items()}
        rows.append({"id": mid, "truth": truth, "classes": per_class})
        flagged = {t: v for t, v in per_class.items()
                   if v["flip"] >= 0.3 and v["noise"] <= v["flip"] / 2 and v["shifted"] <= v["flip"] / 2}
        print(mid, "truth", truth, flush=True)
        for t, v in per_class.items():
            if v["flip"] >= 0.3 or t == truth:
                print(f"   class {t}{'*' if t == truth else ' '} {v}{'  PASSES both controls' if t in flagged else ''}",
                      flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
