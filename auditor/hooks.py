"""Capturing intermediate activations, and choosing which ones to capture, without leaking hooks.

:func:`capture_activations` is the only place that registers activation hooks: a context manager that
removes them in ``finally``. :func:`choose_layers` traces one forward pass to pick, automatically,
the output of each *stage* (the last tensor at each spatial resolution; for networks whose features
keep one resolution, e.g. PointNet's per-point MLP, the last tensor of each channel width) plus the
*penultimate* features (the input of the last linear layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

_LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerRef:
    """One activation to capture: the output of module ``name`` (or its first input if ``use_input``).

    ``name`` is the qualified name in the model the hooks are put on; ``label`` is what reports print.
    ``role`` is ``"stage"`` or ``"penultimate"``.
    """

    name: str
    label: str
    use_input: bool = False
    role: str = "stage"


def display_name(name: str) -> str:
    """Strip the loaders' wrapper prefixes (``model.``, ``graph_module.``) so names match the user's own
    model; a graph tap (see :func:`with_graph_taps`) is named by its op node."""
    while name.startswith(("model.", "graph_module.")):
        name = name.split(".", 1)[1]
    if "tap_" in name:
        return name.rsplit("tap_", 1)[1] + " (graph op)"
    return name or "<model>"


@contextmanager
def capture_activations(
    model: nn.Module, layers: Sequence[LayerRef], *, detach: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict ``label → activation`` refreshed by every forward pass of ``model``.

    A module called several times in one forward keeps its last call. Hooks are removed on exit, also
    when the body raises.
    """
    modules = dict(model.named_modules())
    missing = [ref.name for ref in layers if ref.name not in modules]
    if missing:
        raise KeyError(f"no module named {missing[0]!r} in the model")
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(ref: LayerRef):
        def hook(_module, inputs, output):
            value = inputs[0] if ref.use_input else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            store[ref.label] = value.detach() if detach else value

        return hook

    try:
        for ref in layers:
            handles.append(modules[ref.name].register_forward_hook(make_hook(ref)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replaced_output(model: nn.Module, name: str, value: Callable[[], torch.Tensor]) -> Iterator[None]:
    """While active, module ``name`` of ``model`` returns ``value()`` instead of its own output, so the
    rest of the network runs on a tensor of our choosing (e.g. an optimised activation). The hook is
    removed on exit, also when the body raises."""
    module = dict(model.named_modules())[name]
    handle = module.register_forward_hook(lambda _module, _inputs, _output: value())
    try:
        yield
    finally:
        handle.remove()


def channel_dim(activation: torch.Tensor) -> int:
    """The channel dimension of an activation: 1 of (B, C, H, W) maps and (B, C) features, the last of
    token sequences (B, T, D)."""
    return activation.dim() - 1 if activation.dim() == 3 else 1


@contextmanager
def channels_set(model: nn.Module, name: str, channels: Sequence[int], block: int, value: float) -> Iterator[None]:
    """While active, module ``name`` of ``model``, run on a batch of ``len(channels) × block`` inputs,
    returns its output with channel ``channels[i]`` set to ``value`` everywhere in the i-th block of
    ``block`` rows (one channel driven per block). The hook is removed on exit, also when the body raises."""
    module = dict(model.named_modules())[name]

    def hook(_module, _inputs, output):
        out = output.clone()
        dim = channel_dim(out)
        blocks = out.view(len(channels), block, *out.shape[1:])
        for i, c in enumerate(channels):
            blocks[i].select(dim, int(c)).fill_(value)
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class _Call:
    name: str
    output_id: int
    shape: tuple[int, ...]
    input_id: int | None
    depth: int


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[list[_Call], dict[str, int]]:
    """Every submodule's forward completion, in order, with tensor identities (hooks removed after)."""
    calls: list[_Call] = []
    counts: dict[str, int] = {}
    handles = []
    keep_alive: list[torch.Tensor] = []  # tensor ids are only unique while the tensors live

    def make_hook(name: str):
        def hook(_module, inputs, output):
            counts[name] = counts.get(name, 0) + 1
            if not isinstance(output, torch.Tensor):
                return
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            keep_alive.append(output)
            if first is not None:
                keep_alive.append(first)
            calls.append(_Call(name, id(output), tuple(output.shape), None if first is None else id(first),
                               name.count(".")))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return calls, counts


def _outermost(calls: list[_Call], tensor_id: int, counts: dict[str, int]) -> _Call | None:
    """The module with the shortest name whose (single-call) output is exactly this tensor."""
    same = [c for c in calls if c.output_id == tensor_id and counts.get(c.name, 0) == 1]
    return min(same, key=lambda c: (c.depth, calls.index(c))) if same else None


def _is_spatial(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 3 and math.prod(shape[2:]) > 1


def choose_layers(model: nn.Module, example: torch.Tensor, max_layers: int = 4) -> tuple[LayerRef, ...]:
    """Stage outputs (deepest ``max_layers − 1`` of them) plus the penultimate features.

    ``example`` is one small batch of valid input (batch ≥ 2 so batch-norm layers behave).
    """
    calls, counts = _trace(model, example)
    modules = dict(model.named_modules())
    single = [c for c in calls if counts.get(c.name, 0) == 1]
    spatial = [c for c in single if _is_spatial(c.shape)]

    # stage ends: the last tensor at each spatial resolution
    groups: list[list[_Call]] = []
    for c in spatial:
        if groups and groups[-1][-1].shape[2:] == c.shape[2:]:
            groups[-1].append(c)
        else:
            groups.append([c])
    if len(groups) == 1:  # one resolution throughout (per-point MLPs): split by channel width
        runs: list[list[_Call]] = []
        for c in groups[0]:
            if runs and runs[-1][-1].shape[1] == c.shape[1]:
                runs[-1].append(c)
            else:
                runs.append([c])
        groups = runs
    stage_ids: list[int] = []
    for g in groups:
        if g[-1].output_id not in stage_ids:
            stage_ids.append(g[-1].output_id)

    stages: list[LayerRef] = []
    for tid in stage_ids:
        c = _outermost(calls, tid, counts)
        if c is not None and all(s.name != c.name for s in stages):
            stages.append(LayerRef(c.name, display_name(c.name)))

    penultimate: LayerRef | None = None
    heads = [c for c in single if isinstance(modules[c.name], _LINEAR_TYPES) and c.input_id is not None]
    if heads:
        last = heads[-1]
        feeder = _outermost(calls, last.input_id, counts)
        if feeder is not None:
            penultimate = LayerRef(feeder.name, display_name(feeder.name), role="penultimate")
        else:
            penultimate = LayerRef(last.name, f"input of {display_name(last.name)}", use_input=True,
                                   role="penultimate")
    elif calls:
        # no linear *module* (e.g. a graph with inlined ops): the last flat activation before the logits
        logits_shape = calls[-1].shape
        flat = [c for c in single if not _is_spatial(c.shape) and c.shape != logits_shape and len(c.shape) >= 2]
        if flat:
            c = _outermost(calls, flat[-1].output_id, counts) or flat[-1]
            penultimate = LayerRef(c.name, display_name(c.name), role="penultimate")
    if penultimate is not None:
        stages = [s for s in stages if s.name != penultimate.name or s.use_input]
    keep = max(max_layers - (1 if penultimate is not None else 0), 0)
    chosen = stages[-keep:] if keep else []
    return tuple(chosen + ([penultimate] if penultimate is not None else []))


def weight_layers_in_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of modules that own parameters directly (conv, linear, norm …), in execution order."""
    calls, counts = _trace(model, example)
    modules = dict(model.named_modules())  # (names may contain dots that get_submodule cannot walk)
    seen: list[str] = []
    for c in calls:
        m = modules[c.name]
        if c.name not in seen and any(True for _ in m.parameters(recurse=False)):
            seen.append(c.name)
    # parameterised modules that return non-tensors are not traced; append them so none is missed
    for name, m in modules.items():
        if name and name not in seen and counts.get(name) and any(True for _ in m.parameters(recurse=False)):
            seen.append(name)
    if not seen:  # graphs that read their weights as attributes never call these modules: use definition order
        seen = [n for n, m in modules.items() if n and any(True for _ in m.parameters(recurse=False))]
    return seen


def with_graph_taps(model: nn.Module) -> nn.Module | None:
    """For models whose layers cannot be hooked (``torch.export``/``torch.fx`` graphs inline every op):
    a deep copy with an ``nn.Identity`` *tap* module after every tensor-valued op of each graph, so the
    hooks above work on it. Returns ``None`` when the model holds no graph module. The copy computes
    exactly what the model computes; the model itself is not touched.
    """
    import copy

    import torch.fx

    if not any(isinstance(m, torch.fx.GraphModule) for m in model.modules()):
        return None
    clone = copy.deepcopy(model)
    for gm in [m for m in clone.modules() if isinstance(m, torch.fx.GraphModule)]:
        graph = gm.graph
        for node in list(graph.nodes):
            if node.op != "call_function" or not isinstance(node.meta.get("val"), torch.Tensor):
                continue
            tap = f"tap_{node.name}"
            gm.add_submodule(tap, nn.Identity())
            with graph.inserting_after(node):
                tapped = graph.call_module(tap, (node,))
            node.replace_all_uses_with(tapped, delete_user_cb=lambda user, t=tapped: user is not t)
        gm.recompile()
    return clone
