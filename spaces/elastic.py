"""The elastic model: apply a candidate to the base model in place, without copying it.

`ElasticModel` re-wires the traced graph around the base model's own parameters. Each layer whose
tensors belong to a channel group is wrapped so that it computes with the first `k` channels (views
of the base weights; a gather only where a concatenation or a grouped conv makes the kept channels
non-contiguous), running its own forward at those widths (see `layers`), and each removable residual block becomes a module that skips its branch when the
block is removed. `apply(candidate)` only records widths (microseconds); each wrapper cuts its
tensors once, at its first forward after an `apply`, and reuses them until the next one.

BatchNorm running statistics are views of the base model's buffers, so recalibrating the elastic
model in train mode updates the base model's statistics for the kept channels: take a
`bn_snapshot()` first and `restore_bn()` after, as the evaluators do. By default the cut weights carry
no gradient (scoring); `state.override` and `state.volatile` let a weight generator train through it, and
`trainable()` is the block both trainers run in (a PruningNet's generators, a supernet's shared weights).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.fx as fx
from torch import nn

from .channels import Layout
from .derive import PrunableModel
from .layers import function_layer, running_stat_norms, shrink
from .ops import full_index
from .rewrite import empty_like, graph_module, out_of_place_consumers, view_any_length
from .slicing import axis_index, is_prefix, kept_slice, piece_sizes, slice_tensor
from .submodule import placed


class ElasticState:
    """The widths and keep flags in force, and a version that moves on every `apply`.

    `override(name, base_tensor)`, when set, supplies the full-size tensor to cut instead of the base
    model's (a PruningNet generating weights, say). With `volatile` set, wrappers cut again at every
    forward, with gradients flowing into what `override` returned (for training such a generator).
    """

    def __init__(self, prunable: PrunableModel):
        self.prunable = prunable
        self.widths = [g.size for g in prunable.graph.groups]
        self.keeps = [True] * len(prunable.graph.blocks)
        self.version = 0
        self.override: Callable[[str, torch.Tensor], torch.Tensor] | None = None
        self.volatile = False

    def cut(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (or its override) cut to the widths in force, sharing storage where it can."""
        if self.override is not None:
            tensor = self.override(name, tensor)
        elif not self.volatile:
            tensor = tensor.detach()
        uses = self.prunable.graph.uses.get(name)
        return slice_tensor(tensor, uses, self.widths, self.prunable.graph.groups) if uses else tensor


class ElasticLayer(nn.Module):
    """A layer of the table computing with its tensors cut to the widths in force.

    It runs the layer's own forward on a shrunk shallow copy (`layers.shrink`, made per forward so that
    it follows the layer's mode and attributes) holding views of the base tensors (a gather only where
    the kept channels are not a prefix), cut at the first forward after an `apply`. Cut buffers that are gathered copies (BatchNorm statistics behind a concatenation) are
    written back to the base model after a forward in train mode.
    """

    def __init__(self, module: nn.Module, name: str, state: ElasticState):
        super().__init__()
        self.inner = module
        self.name = name
        self.state = state
        self._version = -1
        self._copy: nn.Module | None = None
        self._own: dict[str, object] = {}  # what the cut copy holds of its own (tensors, resized sizes)
        self._tensors: dict[str, torch.Tensor] = {}
        self._writeback: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []

    def _refresh(self) -> None:
        graph = self.state.prunable.graph
        tensors: dict[str, torch.Tensor] = {}
        self._tensors, self._writeback = tensors, []
        for field_name, t in [*self.inner._parameters.items(), *self.inner._buffers.items()]:
            name = f"{self.name}.{field_name}"
            uses = graph.uses.get(name)
            if t is None or not uses:
                continue
            cut = self.state.cut(name, t)
            tensors[field_name] = cut.contiguous() if cut.dim() > 1 else cut
            if field_name in self.inner._buffers and not all(is_prefix(u, graph.groups) for u in uses):
                index = axis_index(uses[0].layout, self.state.widths, graph.groups).to(t.device)
                self._writeback.append((t, uses[0].axis, index, cut))

    def _fresh(self) -> nn.Module:
        """The layer at the cut widths: made again after an `apply`, else brought up to the layer's
        current attributes (mode, momentum, ...) with two dict updates instead of a new copy."""
        if self.state.volatile:
            self._refresh()  # every forward, with gradients
            return shrink(self.inner, self._tensors)
        if self._version != self.state.version:
            with torch.no_grad():
                self._refresh()
            self._version = self.state.version
            self._copy = shrink(self.inner, self._tensors)
            own = self.inner.__dict__
            self._own = {k: v for k, v in self._copy.__dict__.items() if k not in own or own[k] is not v}
            return self._copy
        copy = self._copy.__dict__
        copy.update(self.inner.__dict__)
        copy.update(self._own)
        return self._copy

    def forward(self, *args, **kwargs):
        layer = self._fresh()
        out = layer(*args, **kwargs)  # the layer as it is now, at the cut widths
        if self.inner.training and self._writeback:
            with torch.no_grad():  # the cut statistics are a copy: write them back
                for base, axis, index, cut in self._writeback:
                    base.index_copy_(axis, index, cut)
        return out


class ElasticTensor(nn.Module):
    """Stands in for a `get_attr` of a per-channel tensor (e.g. ConvNeXt's layer scale)."""

    def __init__(self, tensor: torch.Tensor, name: str, state: ElasticState):
        super().__init__()
        self.tensor, self.name, self.state = tensor, name, state
        self._version, self._cut = -1, None

    def forward(self) -> torch.Tensor:
        if self.state.volatile:
            return self.state.cut(self.name, self.tensor)
        if self._version != self.state.version:
            with torch.no_grad():
                self._cut = self.state.cut(self.name, self.tensor)
            self._version = self.state.version
        return self._cut


class ElasticSplit(nn.Module):
    """A split along channels into its pieces' kept lengths at the widths in force."""

    def __init__(self, axis: int, pieces: list[Layout], state: ElasticState):
        super().__init__()
        self.axis, self.pieces, self.state = axis, pieces, state

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(x, piece_sizes(self.pieces, self.state.widths), dim=self.axis)


class ElasticSlice(nn.Module):
    """`x[index]` where the index slices the channel axis: its bounds at the widths in force."""

    def __init__(self, index: tuple[slice, ...], axis: int, pieces: list[Layout], state: ElasticState):
        super().__init__()
        self.index, self.axis, self.pieces, self.state = index, axis, pieces, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[kept_slice(self.index, self.axis, self.pieces, self.state.widths)]


class ElasticResidual(nn.Module):
    """`x + branch(x)` while the block is kept, `x` once it is removed (the branch is not run)."""

    def __init__(self, branch: fx.GraphModule, index: int, branch_first: bool, state: ElasticState):
        super().__init__()
        self.branch, self.index, self.branch_first, self.state = branch, index, branch_first, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.state.keeps[self.index]:
            return x
        y = self.branch(x)
        return y + x if self.branch_first else x + y


class ElasticModel(nn.Module):
    """The base model, able to run any candidate of its space in place. See the module docstring."""

    def __init__(self, prunable: PrunableModel):
        super().__init__()
        self.prunable = prunable
        self.state = ElasticState(prunable)
        graph = prunable.graph
        new_graph = empty_like(graph.gm.graph)
        val_map: dict[fx.Node, fx.Node] = {}
        new_graph.output(new_graph.graph_copy(graph.gm.graph, val_map))
        new_of = {old.name: new for old, new in val_map.items()}

        root: dict[str, object] = {}
        for old in graph.gm.graph.nodes:
            node = val_map.get(old)
            if node is None:
                continue
            if node.op == "call_module" and node.target not in root:
                module = graph.modules[node.target]
                has_uses = any(f"{node.target}.{n}" in graph.uses for n in [*module._parameters, *module._buffers])
                root[node.target] = ElasticLayer(module, node.target, self.state) if has_uses else module
            elif node.op == "get_attr":
                tensor = graph.tensors[node.target]
                if node.target in graph.uses:
                    name = f"_elastic_tensors.{node.target.replace('.', '_')}"
                    root.setdefault(name, ElasticTensor(tensor, node.target, self.state))
                    with new_graph.inserting_before(node):
                        replacement = new_graph.call_module(name)
                    node.replace_all_uses_with(replacement)
                    new_graph.erase_node(node)
                    new_of[old.name] = replacement
                else:
                    root[node.target] = tensor
        for name in graph.resized_calls:  # functional calls whose size arguments follow the widths
            new_of[name].target = function_layer(graph.node(name).target).call_elastic
        for i, (name, (axis, pieces)) in enumerate(graph.splits.items()):
            root[f"_elastic_splits.{i}"] = ElasticSplit(axis, pieces, self.state)
            node = new_of[name]
            with new_graph.inserting_before(node):
                new_of[name] = new_graph.call_module(f"_elastic_splits.{i}", (node.args[0],))
            node.replace_all_uses_with(new_of[name])
            new_graph.erase_node(node)
        for name, axis in graph.param_views.items():
            new_of[name].args = view_any_length(new_of[name], axis)
        for i, (name, (axis, pieces)) in enumerate(graph.slices.items()):
            node = new_of[name]
            x, index = node.args
            index = full_index(index, len(graph.shape(graph.node(name))))
            root[f"_elastic_slices.{i}"] = ElasticSlice(index, axis, pieces, self.state)
            with new_graph.inserting_before(node):
                new_of[name] = new_graph.call_module(f"_elastic_slices.{i}", (x,))
            node.replace_all_uses_with(new_of[name])
            new_graph.erase_node(node)
        for block in graph.blocks:  # in graph order: a block's input may be the previous block's add
            self._extract(new_graph, block, new_of, root)
        new_graph.lint()
        self.net = graph_module(root, new_graph, f"Elastic{type(graph.model).__name__}")
        #: a submodule's space (`prunable.outside`): the whole model, sharing everything but that submodule
        self.whole = None if prunable.outside is None else placed(prunable.model, prunable.outside, self.net,
                                                                  copied=False)

    def _extract(self, graph: fx.Graph, block, new_of: dict[str, fx.Node], root: dict[str, object]) -> None:
        add, x, y = new_of[block.add], new_of[block.input], new_of[block.output]
        members = {new_of[n] for n in block.branch}
        branch_graph = fx.Graph()
        env = {x: branch_graph.placeholder("x")}
        ordered = [n for n in graph.nodes if n in members]
        for n in ordered:
            env[n] = branch_graph.node_copy(n, lambda a: env[a])
        branch_graph.output(env[y])
        name = f"_residual_blocks.{block.index}"
        root[name] = ElasticResidual(graph_module(root, branch_graph, "Branch"), block.index,
                                     block.branch_first, self.state)
        with graph.inserting_before(add):
            replacement = graph.call_module(name, (x,))
        add.replace_all_uses_with(replacement)
        graph.erase_node(add)
        for n in reversed(ordered):
            graph.erase_node(n)
        out_of_place_consumers(replacement, root)  # a removed block returns its input itself
        new_of[block.add] = replacement

    # -- the candidate in force ------------------------------------------------------------------
    def apply(self, candidate: Mapping[str, int]) -> None:
        """Run `candidate` from now on (cheap: the cut happens lazily, once per layer)."""
        self.state.widths = self.prunable.widths(candidate)
        self.state.keeps = self.prunable.keeps(candidate)
        self.state.version += 1

    def reset(self) -> None:
        """Back to the full model."""
        self.apply(self.prunable.space.full())

    def forward(self, *args, **kwargs):
        """The model's own call: a tensor, or the structured arguments it was derived for (`spaces.structure`);
        for a submodule's space, the whole model's call (a detector's list of images, and targets in train mode)."""
        return (self.net if self.whole is None else self.whole)(*args, **kwargs)

    @contextlib.contextmanager
    def trainable(self, seed: int, *, freeze_base: bool) -> Iterator[torch.device]:
        """Train through the elastic model within the block; yields the base model's device.

        Inside: train mode, `state.volatile` (every forward cuts again, gradients flowing into what it cuts),
        torch's RNG forked and seeded with `seed` (dropout, a shuffling loader; the caller's RNG state is
        untouched), and with `freeze_base` the base parameters get no gradient (a weight generator trains
        alone). After: the base model's mode and `requires_grad` flags as they were, the full widths in force.
        """
        model = self.prunable.model
        device = next(iter(model.parameters()), torch.empty(0)).device
        was_training = model.training
        grads = [(p, p.requires_grad) for p in model.parameters()]
        try:
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                if freeze_base:
                    for p, _ in grads:
                        p.requires_grad_(False)
                self.train()
                self.state.volatile = True
                yield device
        finally:
            self.state.volatile = False
            for p, flag in grads:
                p.requires_grad_(flag)
            model.train(was_training)
            self.reset()

    # -- BatchNorm statistics --------------------------------------------------------------------
    def batchnorms(self) -> list[nn.Module]:
        return running_stat_norms(self.prunable.model)

    def bn_snapshot(self) -> list[tuple[torch.Tensor, ...]]:
        """A copy of every BatchNorm's running statistics (small: two vectors per layer)."""
        return [tuple(t.clone() for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
                      if t is not None) for bn in self.batchnorms()]

    def restore_bn(self, snapshot: list[tuple[torch.Tensor, ...]]) -> None:
        with torch.no_grad():
            for bn, saved in zip(self.batchnorms(), snapshot):
                live = [t for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked) if t is not None]
                for t, s in zip(live, saved):
                    t.copy_(s)
