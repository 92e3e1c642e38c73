"""Train the bundled diffusion priors (auditor/assets/priors/<name>/) on CPU with one thread.

    python bench/train_priors.py digits [--steps 2500]
    python bench/train_priors.py shapes [--steps 2500]

Resumable: rerunning continues from the last checkpoint. The optimiser state is dropped at the end
(with --finalise) so that the bundled folder holds only the UNet weights (≈1 MB), scheduler and meta.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from auditor.diffusion.prior import drop_training_state, train_prior  # noqa: E402


def load(name: str) -> torch.Tensor:
    if name == "digits":
        from auditor.synthetic.digits import load_digits_28

        x, _, _, _ = load_digits_28(0)
        return x
    if name == "shapes":
        from auditor.synthetic.shapes import load_shapes_32

        out = load_shapes_32(0)
        return out[0]
    raise SystemExit(f"unknown prior {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=["digits", "shapes"])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--finalise", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="default: auditor/assets/priors/<name>")
    ap.add_argument("--context-share", type=float, default=None,
                    help="share of training images given a random frame or texture (default: the library's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = args.out or ROOT / "auditor" / "assets" / "priors" / args.name
    started = time.monotonic()

    def progress(step: int, steps: int, loss: float) -> None:
        if step % 100 == 0 or step == steps:
            print(f"{args.name} step {step}/{steps} loss {loss:.4f} {time.monotonic() - started:.0f}s", flush=True)

    extra = {} if args.context_share is None else {"context_share": args.context_share}
    train_prior(load(args.name), out, steps=args.steps, progress=progress, name=args.name, **extra)
    if args.finalise:
        drop_training_state(out)
    print(f"done in {time.monotonic() - started:.0f}s -> {out}", flush=True)


if __name__ == "__main__":
    main()
