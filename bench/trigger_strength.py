"""How much of its trigger a model needs: attack success at a fraction of the planted strength.

    python bench/trigger_strength.py [--zoo bench/zoo/foreign bench/zoo ...] [--kinds blended,sig]

For every scored member whose attack has a strength knob (blended: α, SIG: Δ at test time), the
trigger is applied at 25 %, 50 %, 75 % and 100 % of that strength to the domain's test images of other
classes, and the share sent to the target is printed with the input-space size of the full-strength
change (RMS over pixels). A diagnostic of bench/RESULTS.md §9: it reads trained weights and planted
truth only, never a detector's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.synthetic.train import accuracy  # noqa: E402
from bench.common import content_hash  # noqa: E402
from bench.zoo import DOMAIN_SHAPE, build_module, domain_data, make_trigger  # noqa: E402

SCALES = (0.25, 0.5, 0.75, 1.0)


def scaled(trigger, scale: float):
    """The same trigger at ``scale`` × its strength (blended α, SIG test Δ)."""
    if hasattr(trigger, "alpha"):
        return dataclasses.replace(trigger, alpha=trigger.alpha * scale)
    strength = trigger.test_delta if trigger.test_delta is not None else trigger.delta
    return dataclasses.replace(trigger, delta=strength * scale, test_delta=None)


def member_rows(zoo: Path, kinds: set[str]):
    manifest = json.loads((zoo / "manifest.json").read_text())
    for m in manifest["members"]:
        a = m["attack_params"]
        if not m["scored"] or a is None or a["kind"] not in kinds:
            continue
        model = build_module(m["recipe"])
        weights = zoo / "cache" / content_hash(m["recipe"]) / "weights.pt"
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        _, _, xte, yte, _ = domain_data(m["domain"])
        x = xte[yte != a["target"]]
        trigger = make_trigger(a, DOMAIN_SHAPE[m["domain"]][0])
        target = torch.full((len(x),), a["target"])
        with torch.no_grad():
            asr = [accuracy(model, scaled(trigger, s).apply(x), target) for s in SCALES]
            rms = float((scaled(trigger, 1.0).apply(x) - x).pow(2).mean().sqrt())
        yield m["id"], m["attack"], asr, rms


def main(argv: list[str] | None = None) -> int:
    bench = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, nargs="+", default=[bench / "zoo" / "foreign", bench / "zoo"])
    p.add_argument("--kinds", default="blended,sig")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| member | attack | " + " | ".join(f"ASR at {s:g}×" for s in SCALES) + " | RMS change at 1× |")
    print("|---|---|" + "---|" * (len(SCALES) + 1))
    for zoo in a.zoo:
        for mid, attack, asr, rms in member_rows(zoo, set(a.kinds.split(","))):
            print(f"| {mid} | {attack} | " + " | ".join(f"{v:.2f}" for v in asr) + f" | {rms:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
