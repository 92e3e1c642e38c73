"""Numerical core of the input-agnostic saliency detector (see :mod:`auditor.detectors.saliency`).

Everything here works on one canonical image batch layout and on all classes at once: tensors carry a
leading class axis K (and a budget axis L for the mask ladder), and a single forward pass evaluates
every (class, budget, sample) combination.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Check = Callable[[], None]


@dataclass(frozen=True)
class UniversalMaps:
    """ℓ2-ball universal perturbations ρ_t, one per class, and how well they work on fresh samples."""

    rho: torch.Tensor          # (K, C, H, W)
    flip_rate: torch.Tensor    # (K,) fraction of held-out other-class samples sent to t by x + ρ_t (NaN: none)
    margin: torch.Tensor       # (K,) mean margin z_t − max_j≠t z_j on those samples


@dataclass(frozen=True)
class MaskLadder:
    """Budgeted mask + pattern per (class, budget): x' = (1 − m)·x + m·p with Σm ≤ budget·H·W."""

    masks: torch.Tensor        # (K, L, H, W) soft masks in [0, 1]
    patterns: torch.Tensor     # (K, L, C, H, W) in [0, 1]
    budgets: torch.Tensor      # (L,) fractions of the image area
    fit_flip: torch.Tensor     # (K, L) flip rate on the optimisation samples with the binarised mask


def batched_logits(model: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)])


#: Images per forward/backward pass in the all-classes optimisations. Past a few hundred 32×32 images a
#: CPU pass costs more per image (cache), which made 40 classes cost 5.6× what 10 cost; chunking the
#: class axis keeps the cost linear in the number of classes (10-class runs fit in one chunk).
CHUNK_IMAGES = 256


def class_chunks(k: int, images_per_class: int) -> list[slice]:
    """Consecutive class slices of at most :data:`CHUNK_IMAGES` images each (at least one class)."""
    per = max(1, CHUNK_IMAGES // max(1, images_per_class))
    return [slice(i, min(k, i + per)) for i in range(0, k, per)]


def margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    own = logits.gather(1, targets[:, None]).squeeze(1)
    return own - logits.scatter(1, targets[:, None], float("-inf")).max(dim=1).values


def pick_other_class_starts(probs: torch.Tensor, kind: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every class t, the pool samples least like t: ``(index, valid)``, both (K, per_class).

    Samples are interleaved across sampler kinds (round robin, least-t-like first within each kind) so
    that every distribution contributes, and samples the model already assigns to t go last, so the
    starts lie in *other* classes even when the model sends most of the pool to t (a noise sink).
    ``valid`` is False for picks that are nevertheless in t (the pool had too few others); callers
    leave them out of success rates.
    """
    n, k = probs.shape
    pred = probs.argmax(1)
    kinds = kind.unique()
    order_key = torch.empty((n, k), dtype=torch.float64, device=probs.device)
    for j, kd in enumerate(kinds.tolist()):
        rows = torch.nonzero(kind == kd).squeeze(1)
        rank = probs[rows].argsort(dim=0).argsort(dim=0).double()           # 0 = least t-like
        order_key[rows] = rank * len(kinds) + j                              # round robin over kinds
    in_t = pred[:, None] == torch.arange(k, device=probs.device)[None, :]   # (N, K)
    order_key = order_key + in_t.double() * (10.0 * n * len(kinds))
    take = min(per_class, n)
    idx = order_key.argsort(dim=0)[:take].T                                  # (K, take)
    if take < per_class:
        idx = idx.repeat(1, -(-per_class // take))[:, :per_class]
    valid = ~in_t.T.gather(1, idx)
    return idx, valid


def universal_perturbations(
    model: nn.Module, k: int, draw: Callable[[int], torch.Tensor], *, radius: float, steps: int,
    batch: int, step_size: float, eval_x: torch.Tensor, eval_valid: torch.Tensor, check: Check,
) -> UniversalMaps:
    """The paper's loop (reconstructed): each iteration draws fresh samples, nudges them toward class t
    (descent on CE(f(clip(x + ρ_t)), t), only samples not already in t), integrates the normalised mean
    gradient into ρ_t and projects ρ_t onto the ℓ2 ball of ``radius`` (RMS per pixel)."""
    x0 = eval_x[0, :1]
    shape = x0.shape[1:]
    dims = float(x0[0].numel())
    ball = radius * dims**0.5
    rho = torch.zeros((k, *shape), device=x0.device)
    targets = torch.arange(k, device=x0.device)
    velocity = torch.zeros_like(rho)
    for _ in range(steps):
        check()
        x = draw(batch)
        with torch.no_grad():
            start_pred = model(x).argmax(1)
        weight = (start_pred[None, :] != targets[:, None]).float()           # (K, B)
        r = rho.clone().requires_grad_(True)
        for ks in class_chunks(k, len(x)):
            xt = (x[None] + r[ks, None]).clamp(0, 1).flatten(0, 1)           # (k'·B, C, H, W)
            loss = F.cross_entropy(model(xt), targets[ks].repeat_interleave(len(x)), reduction="none")
            (loss.view(ks.stop - ks.start, -1) * weight[ks]).sum().backward()
        grad = r.grad
        grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * len(shape)))
        velocity = 0.9 * velocity + grad  # momentum: the running integral of the nudges
        rho = rho - step_size * ball * velocity / velocity.flatten(1).norm(dim=1).clamp_min(1e-12).view(
            -1, *([1] * len(shape)))
        norms = rho.flatten(1).norm(dim=1).clamp_min(1e-12)
        rho = rho * (ball / norms).clamp(max=1.0).view(-1, *([1] * len(shape)))
    flip, margin = _evaluate_additive(model, rho, eval_x, eval_valid)
    return UniversalMaps(rho.detach(), flip, margin)


@torch.no_grad()
def _evaluate_additive(model: nn.Module, rho: torch.Tensor, x: torch.Tensor,
                       valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip rate and mean margin of x + ρ_t over the countable per-class inputs x (K, N, C, H, W)."""
    k, n = x.shape[:2]
    targets = torch.arange(k, device=x.device)
    logits = batched_logits(model, (x + rho[:, None]).clamp(0, 1).flatten(0, 1))
    t_rep = targets.repeat_interleave(n)
    hit = (logits.argmax(1) == t_rep).float().view(k, n)
    m = margins(logits, t_rep).view(k, n)
    keep = valid.float()
    denom = keep.sum(1)
    return (hit * keep).sum(1) / denom, (m * keep).sum(1) / denom.clamp_min(1.0)


def project_capped_simplex(m: torch.Tensor, budget: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Euclidean projection of each row of ``m`` (…, P) onto {0 ≤ m ≤ 1, Σm ≤ budget} (bisection on τ)."""
    clipped = m.clamp(0, 1)
    over = clipped.sum(-1) > budget
    if not bool(over.any()):
        return clipped
    lo = torch.zeros_like(budget.expand(m.shape[:-1])).clone()
    hi = m.amax(-1).clamp_min(0)
    for _ in range(iters):
        tau = (lo + hi) / 2
        s = (m - tau[..., None]).clamp(0, 1).sum(-1)
        lo = torch.where(s > budget, tau, lo)
        hi = torch.where(s > budget, hi, tau)
    shifted = (m - hi[..., None]).clamp(0, 1)
    return torch.where(over[..., None], shifted, clipped)


def hard_top_k(m: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Binary mask keeping the ``counts`` largest entries of each row (…, P); counts broadcast over rows."""
    p = m.shape[-1]
    ranks = m.argsort(dim=-1, descending=True).argsort(dim=-1)
    return (ranks < counts[..., None].clamp(1, p)).to(m.dtype)


def mask_ladder(
    model: nn.Module, starts: torch.Tensor, valid: torch.Tensor, budgets: tuple[float, ...], *, steps: int,
    lr: float, generator: torch.Generator, check: Check, init: torch.Tensor | None = None,
) -> MaskLadder:
    """Per (class t, budget b): optimise a mask with an ℓ1/pixel budget and a pattern so that pasting the
    pattern through the mask sends the class-t start samples (K, B, C, H, W), which the model assigns to
    other classes, to t. The first half of the steps uses the soft mask; the second half a
    straight-through top-k binarisation of the 3×3-smoothed mask, so that the result is a compact region,
    not a diffuse blend or scattered pixels. ``init`` (K, H, W), non-negative — e.g. the ℓ2 universal
    map — seeds each mask with its highest pixels (the refinement of a coarse map)."""
    k, b, c, h, w = starts.shape
    device = starts.device
    lvl = len(budgets)
    area = torch.tensor(budgets, device=device) * h * w                      # (L,) pixels
    counts = area.round().long().clamp_min(1)
    area_kl = area.view(1, lvl).expand(k, lvl)
    mask = torch.full((k, lvl, h * w), 0.0, device=device) + area.view(1, lvl, 1) / (h * w)
    if init is not None:
        seed_map = init.flatten(1) / init.flatten(1).amax(1, keepdim=True).clamp_min(1e-12)   # (K, H·W) in [0,1]
        mask = seed_map[:, None].expand(k, lvl, h * w).clone()
    mask = mask + 0.01 * torch.rand(mask.shape, generator=generator).to(device)
    mask = project_capped_simplex(mask, area_kl).requires_grad_(True)
    pattern_logit = (2 * torch.rand((k, lvl, c, h, w), generator=generator) - 1).to(device).requires_grad_(True)
    opt = torch.optim.Adam([mask, pattern_logit], lr=lr, betas=(0.5, 0.9))
    targets = torch.arange(k, device=device).view(k, 1, 1).expand(k, lvl, b).reshape(-1)
    weight = valid.float().view(k, 1, b).expand(k, lvl, b).reshape(-1)
    weight = weight / weight.sum().clamp_min(1.0)
    for step in range(steps):
        check()
        m = mask
        if step >= steps // 2:
            hard = hard_top_k(smooth(mask.detach(), h, w), counts.view(1, lvl).expand(k, lvl))
            m = hard + mask - mask.detach()
        m = m.view(k, lvl, 1, 1, h, w)
        p = torch.sigmoid(pattern_logit)[:, :, None]                           # (K, L, 1, C, H, W)
        opt.zero_grad(set_to_none=True)
        for ks in class_chunks(k, lvl * b):  # classes are independent: per-chunk backward sums exactly
            x = (1 - m[ks]) * starts[ks, None] + m[ks] * p[ks]                  # (k', L, B, C, H, W)
            rows = slice(ks.start * lvl * b, ks.stop * lvl * b)
            loss = (F.cross_entropy(model(x.reshape(-1, c, h, w)), targets[rows], reduction="none")
                    * weight[rows]).sum()
            loss.backward(retain_graph=ks.stop < k)
        opt.step()
        with torch.no_grad():
            mask.copy_(project_capped_simplex(mask, area_kl))
    with torch.no_grad():
        masks = mask.detach().view(k, lvl, h, w)
        patterns = torch.sigmoid(pattern_logit.detach())
        fit_flip = paste_success(model, binarise(masks, budgets), patterns, starts, valid)
    return MaskLadder(masks, patterns, torch.tensor(budgets), fit_flip)


def smooth(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """3×3 box blur of flattened maps (…, H·W): ranking on it favours contiguous regions."""
    shape = m.shape
    img = m.reshape(-1, 1, h, w)
    return F.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=False).reshape(shape) + 1e-3 * m


def binarise(masks: torch.Tensor, budgets: tuple[float, ...]) -> torch.Tensor:
    """Top-k binarisation (on the smoothed mask) of (K, L, H, W) soft masks at each level's pixel budget."""
    k, lvl, h, w = masks.shape
    counts = (torch.tensor(budgets, device=masks.device) * h * w).round().long().clamp_min(1)
    return hard_top_k(smooth(masks.flatten(2), h, w), counts.view(1, lvl).expand(k, lvl)).view(k, lvl, h, w)


@torch.no_grad()
def paste_success(model: nn.Module, masks: torch.Tensor, patterns: torch.Tensor, x: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """(K, L) fraction of inputs sent to t by pasting pattern (K,L,C,H,W) through mask (K,L,H,W).

    ``x`` is either shared held-out inputs (N, C, H, W) — then inputs the model already assigns to t
    are left out of class t's rate — or per-class inputs (K, N, C, H, W) with ``valid`` (K, N) saying
    which of them count. A class with no countable input gets NaN."""
    return paste_outcome(model, masks, patterns, x, valid)[0]


@torch.no_grad()
def paste_outcome(model: nn.Module, masks: torch.Tensor, patterns: torch.Tensor, x: torch.Tensor,
                  valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paste_success` and, from the same forward passes, the (K, L) mean margin
    z_t − max_{j≠t} z_j of the countable pasted inputs (a flip rate saturates at 0 and 1, a margin does not)."""
    k, lvl, h, w = masks.shape
    per_class = x.dim() == 5
    xs = x if per_class else x[None].expand(k, *x.shape)
    n = xs.shape[1]
    targets = torch.arange(k, device=x.device)
    if per_class:
        keep = valid.float() if valid is not None else torch.ones((k, n), device=x.device)
    else:
        start = batched_logits(model, x).argmax(1)
        keep = (start[None, :] != targets[:, None]).float()
    rates = torch.empty((k, lvl), device=x.device)
    mean_margin = torch.empty((k, lvl), device=x.device)
    t_rep = targets.repeat_interleave(n)
    for level in range(lvl):  # one level at a time keeps memory at K·N images
        m = masks[:, level, None, None]                                        # (K, 1, 1, H, W)
        p = patterns[:, level, None]                                           # (K, 1, C, H, W)
        logits = batched_logits(model, ((1 - m) * xs + m * p).flatten(0, 1))
        hit = (logits.argmax(1).view(k, n) == targets[:, None]).float()
        rates[:, level] = (hit * keep).sum(1) / keep.sum(1)
        mean_margin[:, level] = (margins(logits, t_rep).view(k, n) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
    return rates, mean_margin  # rates NaN where keep is all zero


def window_concentration(masks: torch.Tensor, budgets: tuple[float, ...], widen: float = 2.0) -> torch.Tensor:
    """(K, L) share of each soft mask's mass inside its best square window of side ⌈widen·√(budget·H·W)⌉.

    1.0 means a compact blob (a patch); a scattered adversarial pattern gets roughly the window's area
    share."""
    k, lvl, h, w = masks.shape
    out = torch.empty((k, lvl), device=masks.device)
    for level, frac in enumerate(budgets):
        side = int(min(h, w, max(2, round(widen * (frac * h * w) ** 0.5))))
        m = masks[:, level : level + 1]
        inside = F.avg_pool2d(m, side, stride=1) * side * side                 # (K, 1, h', w')
        out[:, level] = inside.flatten(1).amax(1) / m.flatten(1).sum(1).clamp_min(1e-9)
    return out


@dataclass(frozen=True)
class WindowScan:
    """Per class, one universal pattern pasted through every square window of a grid: where it drives
    other inputs hardest into t."""

    margin: torch.Tensor       # (K, P) mean margin of the screening inputs, per window
    boxes: torch.Tensor        # (P, 4) top, left, bottom, right of every window
    patterns: torch.Tensor     # (K, C, H, W) full-image pattern; window w pastes its own crop of it
    best: torch.Tensor         # (K,) index of the best finalist window
    best_margin: torch.Tensor  # (K,) its mean margin on all countable evaluation inputs
    best_flip: torch.Tensor    # (K,) the share of them it sends to t (NaN: none countable)

    def heat(self, h: int, w: int) -> torch.Tensor:
        """(K, H, W) location map: each window's margin above the class's median window, spread over the
        window's pixels and averaged where windows overlap. Where a universal patch works, not what it is."""
        masks = box_masks(self.boxes, h, w).to(self.margin.device)                    # (P, H, W)
        excess = (self.margin - self.margin.median(dim=1, keepdim=True).values).clamp_min(0)
        return torch.einsum("kp,phw->khw", excess, masks) / masks.sum(0).clamp_min(1.0)


def window_boxes(h: int, w: int, side: int, stride: int) -> torch.Tensor:
    """(P, 4) square windows of ``side`` on a ``stride`` grid that always includes the far edges."""
    def starts(n: int) -> list[int]:
        last = max(0, n - side)
        out = list(range(0, last + 1, max(1, stride)))
        return out if out[-1] == last else [*out, last]

    return torch.tensor([(t, l, t + side, l + side) for t in starts(h) for l in starts(w)], dtype=torch.long)


def box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(P, H, W) binary masks of (P, 4) top/left/bottom/right boxes."""
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    t, l, b, r = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return ((ys >= t) & (ys < b) & (xs >= l) & (xs < r)).float()


def window_scan(
    model: nn.Module, starts: torch.Tensor, valid: torch.Tensor, eval_x: torch.Tensor, eval_valid: torch.Tensor,
    *, side: int, stride: int, steps: int, lr: float, generator: torch.Generator, check: Check,
    screen: int = 8, finalists: int = 4,
) -> WindowScan:
    """Search every window position for a patch trigger of class t, without a location prior.

    One full-image pattern per class is optimised while, at every step, each start sample (K, B, C, H, W)
    gets the pattern pasted through a *randomly placed* window (a position-agnostic patch attack); then
    every window is screened with its own crop of the pattern on the first ``screen`` held-out inputs of
    each class (K, N, C, H, W), and the ``finalists`` best windows are measured on all of them. It reaches
    patch backdoors that the mask ladder, seeded from a diffuse ℓ2 map, misses (on the dev split: a
    large-patch ViT), and says where on the image a small patch works."""
    k, b, c, h, w = starts.shape
    device = starts.device
    boxes = window_boxes(h, w, side, stride)
    masks = box_masks(boxes, h, w).to(device)                                   # (P, H, W)
    p_count = len(boxes)
    pattern_logit = (2 * torch.rand((k, c, h, w), generator=generator) - 1).to(device).requires_grad_(True)
    opt = torch.optim.Adam([pattern_logit], lr=lr, betas=(0.5, 0.9))
    targets = torch.arange(k, device=device).repeat_interleave(b)
    weight = valid.float().reshape(-1)
    weight = weight / weight.sum().clamp_min(1.0)
    for _ in range(steps):
        check()
        pick = torch.randint(0, p_count, (k, b), generator=generator).to(device)
        m = masks[pick][:, :, None]                                              # (K, B, 1, H, W)
        p = torch.sigmoid(pattern_logit)[:, None]                                # (K, 1, C, H, W)
        opt.zero_grad(set_to_none=True)
        for ks in class_chunks(k, b):
            x = (1 - m[ks]) * starts[ks] + m[ks] * p[ks]
            rows = slice(ks.start * b, ks.stop * b)
            loss = (F.cross_entropy(model(x.reshape(-1, c, h, w)), targets[rows], reduction="none") * weight[rows]).sum()
            loss.backward()
        opt.step()
    patterns = torch.sigmoid(pattern_logit.detach())
    # every window is a one-level "mask ladder" shared by all classes: reuse the paste evaluation
    screen_x, screen_valid = eval_x[:, :screen], eval_valid[:, :screen]
    margin = torch.empty((k, p_count), device=device)
    for i in range(p_count):
        margin[:, i] = paste_outcome(model, masks[i].expand(k, 1, h, w), patterns[:, None], screen_x, screen_valid)[1][:, 0]
    top = margin.topk(min(finalists, p_count), dim=1).indices                     # (K, R)
    rates, final_margin = paste_outcome(model, masks[top], patterns[:, None].expand(k, top.shape[1], c, h, w),
                                        eval_x, eval_valid)                           # (K, R) each
    pick = final_margin.argmax(1, keepdim=True)
    return WindowScan(margin, boxes, patterns, top.gather(1, pick)[:, 0], final_margin.gather(1, pick)[:, 0],
                      rates.gather(1, pick)[:, 0])


def split_layer(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str | None]:
    """The module whose output :func:`feature_dominance` replaces: the stage *before* the deepest stage
    (middle-deep features, where FreeEagle splits convolutional networks), or the only stage there is.
    Returns ``(model to hook, module name)``; exported graphs get a tapped copy (hooks need modules),
    and ``None`` as the name means the network has no spatial stage to split at (e.g. an MLP).
    Caveat: in a ViT, :func:`~auditor.hooks.choose_layers` groups tensors by width, so the "stage" can be
    an MLP's hidden activation, which the residual stream bypasses; the statistic is then a partial split."""
    from auditor.hooks import choose_layers, with_graph_taps

    stages = [ref for ref in choose_layers(model, example) if ref.role == "stage" and not ref.use_input]
    if not stages:
        tapped = with_graph_taps(model)
        if tapped is not None:
            model = tapped
            stages = [ref for ref in choose_layers(model, example) if ref.role == "stage" and not ref.use_input]
    if not stages:
        return model, None
    return model, stages[-2 if len(stages) >= 2 else -1].name


def feature_dominance(model: nn.Module, layer: str, example: torch.Tensor, k: int, *, generator: torch.Generator,
                      steps: int, lr: float, restarts: int, decay: float, check: Check) -> torch.Tensor:
    """Per class j, how much j rises when the network *after* ``layer`` is driven to the other classes.

    After FreeEagle (Fu et al., USENIX Security 2023), data-free: for every class c (``restarts`` times),
    an activation h_c at ``layer`` — started from the activation of a random ``example`` input, kept
    non-negative where the layer's outputs are (post-ReLU), with a little ℓ2 decay — is optimised by Adam
    so that the rest of the network assigns it to c. Each resulting logit row is centred on its median and
    divided by its mean absolute deviation; the statistic of class j is the mean of its entry over the
    rows of the other classes. A backdoor's trigger features drive the target from anywhere in feature
    space, whatever the trigger looks like in pixels, so the target tends to stand second behind every c.
    Returns (K,) on the CPU."""
    from auditor.hooks import LayerRef, capture_activations, replaced_output

    with torch.no_grad(), capture_activations(model, [LayerRef(layer, layer)], detach=True) as acts:
        model(example)
    act = acts[layer]
    nonneg = bool((act >= 0).all())
    scale = float(act.pow(2).mean().sqrt().clamp_min(1e-8))
    pick = torch.randint(len(example), (restarts * k,), generator=generator).to(example.device)
    inputs = example[pick]
    h = act[pick].clone().requires_grad_(True)
    labels = torch.arange(k, device=example.device).repeat(restarts)
    optimiser = torch.optim.Adam([h], lr=lr * scale)
    with replaced_output(model, layer, lambda: h):
        for step in range(steps):
            if step % 25 == 0:
                check()
            loss = F.cross_entropy(model(inputs), labels) + decay * (h / scale).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, h)
            optimiser.zero_grad()
            h.grad = grad
            optimiser.step()
            if nonneg:
                with torch.no_grad():
                    h.clamp_(min=0)
        with torch.no_grad():
            logits = model(inputs).view(restarts, k, k).mean(0).double().cpu()
    centred = logits - logits.quantile(0.5, dim=1, keepdim=True)
    rows = centred / centred.abs().mean(1, keepdim=True).clamp_min(1e-9)
    return ((rows.sum(0) - rows.diagonal()) / max(1, k - 1)).float()


def channel_stimulation(model: nn.Module, layer: str, x: torch.Tensor, k: int, *, level: float,
                        check: Check) -> torch.Tensor:
    """Per class t, how hard one channel of ``layer``, driven high, sends inputs of other classes into t.

    After ABS (Liu et al., CCS 2019, "artificial brain stimulation"), data-free: a backdoor is learnt as a
    few inner channels that, once the trigger lights them, override the rest of the input, whatever the
    trigger looks like in pixels. Every channel in turn is set to ``level`` × the layer's 99th-percentile
    activation on ``x``, over its whole map; per class t the 20th percentile of the margin toward t over
    the inputs the model puts outside t is taken, and the statistic is its largest value over channels.
    Returns (K,) logit margins on the CPU; 0 for a class no input lies outside."""
    from auditor.hooks import LayerRef, capture_activations, channel_dim, channels_set

    with torch.no_grad():
        with capture_activations(model, [LayerRef(layer, layer)], detach=True) as acts:
            original = model(x).argmax(1)
        act = acts[layer]
        n_channels = act.shape[channel_dim(act)]
        flat = act.flatten().float()
        flat = flat[:: -(-flat.numel() // 1_000_000)]  # torch.quantile takes at most 16M values; keep ≤ 1M
        value = level * float(flat.quantile(0.99).clamp_min(1e-6))
        per_pass = max(1, CHUNK_IMAGES // len(x))
        logits = []
        for start in range(0, n_channels, per_pass):
            check()
            channels = list(range(start, min(n_channels, start + per_pass)))
            with channels_set(model, layer, channels, len(x), value):
                out = model(x.repeat(len(channels), *([1] * (x.dim() - 1))))
            logits.append(out.view(len(channels), len(x), k).float().cpu())
        logits = torch.cat(logits)                                                 # (channels, N, K)
    original = original.cpu()
    best = torch.zeros(k)
    for t in range(k):
        others = original != t
        if not others.any():
            continue
        rest = torch.cat([logits[..., :t], logits[..., t + 1:]], dim=-1).amax(-1)
        margin = (logits[..., t] - rest)[:, others]                                # (channels, N_outside)
        best[t] = margin.quantile(0.2, dim=1).max()
    return best
