"""timm models by name: `load_timm("resnet50?drop_path_rate=0.1", num_classes)`, never with pretrained weights."""
from __future__ import annotations

import ast
from typing import Any

from torch import nn

from search.errors import UserError

FORM = "timm:NAME or timm:NAME?key=value&key=value (values are Python literals: 0.1, True, 'avg', (3, 3))"


def parse_timm_spec(name_with_kwargs: str) -> tuple[str, dict[str, Any]]:
    """`"resnet50?drop_path_rate=0.1&global_pool='avg'"` -> ("resnet50", {"drop_path_rate": 0.1, ...}).

    A value that is not a Python literal is taken as a string (`global_pool=avg`).
    """
    name, _, query = name_with_kwargs.partition("?")
    if not name:
        raise UserError(f"empty timm model name; the form is {FORM}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"bad timm keyword argument {item!r} in {name_with_kwargs!r}; the form is {FORM}")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return name, kwargs


def load_timm(name_with_kwargs: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """A randomly initialised timm model (`pretrained=False`: weights are never downloaded) for `in_chans`-channel
    images (unless the spec sets `in_chans` itself)."""
    try:
        import timm
    except ImportError:
        raise UserError('timm models need the timm package: pip install "prunesearch[timm]"') from None
    name, kwargs = parse_timm_spec(name_with_kwargs)
    if name not in timm.list_models():
        close = timm.list_models(f"*{name[:6]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UserError(f"unknown timm model {name!r}{hint} (all: timm.list_models())")
    if kwargs.pop("pretrained", False):
        raise UserError("timm weights are never downloaded: load your own with --weights")
    kwargs.setdefault("in_chans", in_chans)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise UserError(f"timm:{name_with_kwargs}: {str(error).splitlines()[0]}") from None
