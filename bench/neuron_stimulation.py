"""Does one inner channel, driven high, send every input to a class? A candidate `saliency` statistic,
measured offline (stop 29).

    python bench/neuron_stimulation.py probe --out bench/_cache/stim_a.json --dev-seeds 6000-7807
    python bench/neuron_stimulation.py evaluate bench/_cache/stim_a.json --seeds 6000-7807      # selection
    python bench/neuron_stimulation.py probe --out bench/_cache/stim_b.json --dev-seeds 9100-10207 --no-clean
    python bench/neuron_stimulation.py evaluate bench/_cache/stim_a.json bench/_cache/stim_b.json \\
        --seeds 9100-10207 --only q20_mid4 \\
        --saliency bench/_cache/saliency_calibration_{a,b,c}.json                                # judge
    python bench/neuron_stimulation.py probe --out bench/_cache/stim_foreign.json \\
        --zoo bench/zoo/foreign --dev-zoo bench/zoo/foreign                                     # foreign models

After ABS (Liu et al., CCS 2019, "artificial brain stimulation"), data-free: a backdoor is learnt as a few
inner channels that, once the trigger lights them, override the rest of the input and elevate the
target. Whatever the trigger looks like in pixels (a patch, a blend, a sinusoid, a warp), the channels
it lights are still channels. So, at two depths (the deepest stage and the one before it, as
``_saliency_core.split_layer`` finds them), every channel in turn is set to a constant value over its
whole map, on unrestricted inputs the model puts in various classes (the detector's held-out inputs,
seed 0), at levels of 1, 2, 4 and 8 times the layer's 99th-percentile activation. Per class t and level
it records the largest share of inputs of other classes that one channel sends to t (``flip``), the
largest 20th-percentile margin toward t of one channel (``q20``, in units of the median |value| over
classes) and the share of channels that send ≥ 80 % of the inputs to t (``count``). Each candidate is
fused with the shipped statistics through ``bench/saliency_fusion.evaluate`` like every other probe
(``bench/candidate_probe.py``); the rule that decides it is in bench/RESULTS.md §3 "Stop 29". The
benchmarked zoo is never read. The chosen candidate, ``q20_mid4``, is the detector's opt-in
``stimulation_margin`` (``--option saliency.channel_stimulation=report|fuse``), which reproduces it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.detectors import _saliency_core as core  # noqa: E402
from auditor.hooks import LayerRef, capture_activations, channel_dim, channels_set, choose_layers  # noqa: E402
from bench import candidate_probe  # noqa: E402

LEVELS = (1.0, 2.0, 4.0, 8.0)
INPUTS_PER_CLASS = 2   # of the detector's 32 held-out inputs per class: K × 2 stimulated inputs
CHUNK = 2048           # stimulated images per forward pass
FLIP_COUNTED = 0.8


def stimulation_layers(model: torch.nn.Module, example: torch.Tensor) -> list[str]:
    stages = [ref.name for ref in choose_layers(model, example) if ref.role == "stage" and not ref.use_input]
    return stages[-2:]


def stimulate(model, layer: str, x: torch.Tensor, k: int) -> np.ndarray:
    """Logits (levels, channels, inputs, K) with each channel of ``layer`` in turn set to each level."""
    with torch.no_grad(), capture_activations(model, [LayerRef(layer, layer)], detach=True) as acts:
        model(x)
    act = acts[layer]
    n_channels = act.shape[channel_dim(act)]
    sample = act.flatten()
    if sample.numel() > 1_000_000:
        sample = sample[torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    scale = float(sample.float().quantile(0.99).clamp_min(1e-6))
    per_pass = max(1, CHUNK // len(x))
    out = np.zeros((len(LEVELS), n_channels, len(x), k), dtype=np.float32)
    with torch.no_grad():
        for li, level in enumerate(LEVELS):
            for start in range(0, n_channels, per_pass):
                channels = torch.arange(start, min(n_channels, start + per_pass))
                batch = x.repeat(len(channels), *([1] * (x.dim() - 1)))
                with channels_set(model, layer, channels.tolist(), len(x), level * scale):
                    logits = model(batch)
                out[li, start:start + len(channels)] = logits.view(len(channels), len(x), k).float().numpy()
    return out


def summarise(logits: np.ndarray, original: np.ndarray) -> dict[str, list[list[float]]]:
    """Per level and class: ``flip``, ``q20`` and ``count`` (module docstring) from stimulated logits."""
    n_levels, _, n, k = logits.shape
    pred = logits.argmax(-1)                                                # (L, C, N)
    flip, q20, count = (np.zeros((n_levels, k)) for _ in range(3))
    for t in range(k):
        others = original != t
        if not others.any():
            continue
        rest = np.delete(logits, t, axis=-1).max(-1)                       # (L, C, N)
        margin = (logits[..., t] - rest)[..., others]
        share = (pred[..., others] == t).mean(-1)                          # (L, C)
        flip[:, t] = share.max(1)
        q20[:, t] = np.quantile(margin, 0.2, axis=-1).max(1)
        count[:, t] = (share >= FLIP_COUNTED).mean(1)
    return {"flip": flip.tolist(), "q20": q20.tolist(), "count": count.tolist()}


def probe(module, spec) -> dict:
    model, _shape, k, _context, held, _valid = candidate_probe.detector_held_out(module, spec)
    x = held[:, :INPUTS_PER_CLASS].flatten(0, 1)
    with torch.no_grad():
        original = core.batched_logits(model, x).argmax(1).numpy()
    out = {}
    for depth, layer in zip(("mid", "deep"), stimulation_layers(model, x)):
        out[depth] = {"layer": layer, **summarise(stimulate(model, layer, x, k), original)}
    return out


def candidates(row: dict) -> dict[str, np.ndarray]:
    out = {}
    for depth in ("mid", "deep"):
        if depth not in row:
            continue
        for li, level in enumerate(LEVELS):
            for stat in ("flip", "q20", "count"):
                values = np.array(row[depth][stat][li], dtype=np.float64)
                if stat == "q20":
                    values = values / (float(np.median(np.abs(values))) + 1e-9)
                out[f"{stat}_{depth}{level:g}"] = values
    return out


#: the candidate statistics, in the order ``evaluate`` lists them
NEW = [f"{stat}_{depth}{level:g}" for depth in ("mid", "deep") for level in LEVELS for stat in ("flip", "q20", "count")]


def main(argv: list[str] | None = None) -> int:
    return candidate_probe.main(argv, __doc__, probe, candidates, NEW)


if __name__ == "__main__":
    raise SystemExit(main())
