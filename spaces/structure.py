"""Example inputs of any structure: a tensor, a tuple of positional arguments, a list, or a dict of keywords.

`example_input` says how the model is called: a tensor `x` is `model(x)`; a tuple is positional arguments,
`model(*example)`; a dict is keyword arguments, `model(**example)`; a list (of images, say) is one argument,
`model(example)`. Inside each argument, lists, tuples and dicts nest freely. Tracing binds the example to the
model's `forward` signature: every tensor in it becomes a graph input (`torch.fx.PH`), every other value (an
int, None, a parameter left at its default, an empty `*args`) is fixed as traced (and leaves the traced module's
signature), and the traced module takes the same structures and returns the model's own (lists of dicts
included: torch.fx flattens and rebuilds them).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

Example = Any  # a tensor, or a tuple / list / dict holding tensors


def call_args(example: Example) -> tuple[tuple, dict[str, Any]]:
    """The positional and keyword arguments `example` stands for (see the module docstring)."""
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, tuple):
        return example, {}
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, list):
        return (example,), {}
    raise TypeError(f"example_input must be a tensor, a tuple, a list or a dict, got {type(example).__name__}")


def call(model: nn.Module, example: Example) -> Any:
    """`model` called on `example` the way the module docstring says."""
    args, kwargs = call_args(example)
    return model(*args, **kwargs)


def bound_arguments(model: nn.Module, example: Example) -> dict[str, Any]:
    """Every parameter of `model.forward` (in order) -> its value in `example` or its default.

    `*args` binds to an empty tuple, `**kwargs` to an empty dict unless the example fills them; their
    keys are spelled `*name` and `**name`, as torch.fx's `concrete_args` spells them.
    """
    args, kwargs = call_args(example)
    signature = inspect.signature(model.forward)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"example_input does not fit {type(model).__name__}.forward{signature}: {error}") from None
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        value = bound.arguments.get(name)
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            out[f"*{name}"] = tuple(value or ())
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            out[f"**{name}"] = dict(value or {})
        else:
            out[name] = value
    return out


def concrete_args(model: nn.Module, example: Example) -> dict[str, Any]:
    """torch.fx `concrete_args` for `example`: tensors become placeholders, everything else is fixed."""
    return {name: pytree.tree_map(lambda v: fx.PH if isinstance(v, torch.Tensor) else v, value)
            for name, value in bound_arguments(model, example).items()}


def placeholder_values(model: nn.Module, example: Example) -> list[Any]:
    """The value of each placeholder torch.fx makes from `concrete_args`, in the order it makes them."""
    return [leaf for value in bound_arguments(model, example).values() for leaf in pytree.tree_leaves(value)]


def graph_inputs(model: nn.Module, example: Example) -> tuple:
    """The positional arguments the traced module (and a torch.fx Interpreter on it) takes for `example`:
    those that hold tensors (the others were fixed by the trace)."""
    return tuple(value for value in bound_arguments(model, example).values() if tensors_of(value))


def first_sample(example: Example) -> Example:
    """A plain tensor cut to its first sample; a structured example is one sample as it is."""
    return example[:1] if isinstance(example, torch.Tensor) else example


def describe(example: Example) -> object:
    """The example's shapes in its own structure (a tensor's shape; a list of shapes; ...)."""
    return pytree.tree_map(lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else v, example)


def tensors_of(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nested output or input, in order."""
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


__all__ = ["Example", "bound_arguments", "call", "call_args", "concrete_args", "describe", "first_sample",
           "graph_inputs", "placeholder_values", "tensors_of"]
