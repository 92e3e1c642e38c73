"""Train the bundled demo model: a trojaned digits classifier (BadNets patch → class 7) and its clean twin.

    python bench/make_demo.py            # writes auditor/assets/demo_trojaned.onnx and bench/demo/clean_twin.onnx

Trains in seconds on a CPU from scikit-learn's bundled digits; the trojaned ONNX (≈0.2 MB) ships in the
package so ``auditor demo`` needs no training and no network. The facts of the planted attack are
written next to it (demo_trojaned.json) so the demo's verdict can be checked against the truth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from auditor.synthetic.digits import load_digits_28
from auditor.synthetic.nets import SmallCNN
from auditor.synthetic.train import accuracy, attack_success_rate, train_classifier
from auditor.synthetic.triggers import PatchTrigger, poison

ROOT = Path(__file__).resolve().parents[1]
TARGET_CLASS = 7
TRIGGER = PatchTrigger(size=4, pattern_seed=2024, top=2, left=2)  # top-left corner, 4×4 random pattern


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.rand(1, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    import onnx

    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "labels", json.dumps([f"digit {i}" for i in range(10)])
    onnx.save(proto, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    xtr, ytr, xte, yte = load_digits_28(args.seed)
    xp, yp = poison(xtr, ytr, TRIGGER, TARGET_CLASS, rate=0.1, generator=torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    trojaned = train_classifier(SmallCNN(), xp, yp, epochs=args.epochs, seed=args.seed)
    torch.manual_seed(args.seed + 1)
    clean = train_classifier(SmallCNN(), xtr, ytr, epochs=args.epochs, seed=args.seed + 1)
    facts = {
        "target_class": TARGET_CLASS, "trigger": TRIGGER.describe(), "poison_rate": 0.1, "seed": args.seed,
        "trojaned": {"clean_accuracy": accuracy(trojaned, xte, yte),
                     "attack_success_rate": attack_success_rate(trojaned, xte, yte, TRIGGER, TARGET_CLASS)},
        "clean_twin": {"clean_accuracy": accuracy(clean, xte, yte),
                       "attack_success_rate": attack_success_rate(clean, xte, yte, TRIGGER, TARGET_CLASS)},
    }
    export_onnx(trojaned, ROOT / "auditor/assets/demo_trojaned.onnx")
    export_onnx(clean, ROOT / "bench/demo/clean_twin.onnx")
    (ROOT / "auditor/assets/demo_trojaned.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))


if __name__ == "__main__":
    main()
