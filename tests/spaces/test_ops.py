"""The op table: module and function forms of an op are one entry; a user's op is taught in both forms."""
from __future__ import annotations

import torch
from torch import nn

from spaces.derive import derive
from spaces.ops import op_named, op_of, pass_through, register_op


def test_module_and_function_forms_of_an_op_are_one_entry():
    assert op_of(nn.ReLU()) is op_named("relu") is op_named("relu_") is op_of(nn.Dropout())
    assert op_of(nn.Flatten()) is op_named("flatten")
    assert op_of(nn.ZeroPad2d(1)) is op_named("pad")
    assert op_of(nn.Conv2d(3, 3, 1)) is None and op_named("einsum") is None


class Expit(nn.Module):
    def forward(self, x):
        return torch.special.expit(x)


class WithExpit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b, self.c = nn.Conv2d(3, 8, 1), Expit(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.special.expit(self.b(self.act(self.a(x)))))


def test_register_op_teaches_a_users_op_in_both_forms():
    x = torch.randn(1, 3, 8, 8)
    assert derive(WithExpit(), x).space.widths == []  # 'special_expit' is unknown: the channels it reads are frozen
    register_op("expit", pass_through, names=("special_expit",), modules=(Expit,))
    prunable = derive(WithExpit(), x)
    assert "act" in {n.target for n in prunable.graph.gm.graph.nodes if n.op == "call_module"}  # a leaf now
    assert [d.name for d in prunable.space.widths] == ["a", "b"]
