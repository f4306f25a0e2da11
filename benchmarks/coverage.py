"""Coverage table: per model, the derived space and whether every equivalence check passes.

    python benchmarks/coverage.py [MODEL ...]

Columns: channel groups found, width dimensions (prunable groups), removable blocks, the share of base
FLOPs in prunable layers, the smallest candidate's FLOPs ratio (the lowest reachable budget), groups frozen by unsupported ops (with the reasons below the table), and
three checks on 4 random candidates + the smallest one: reordering keeps outputs (reorder), the
elastic model equals the materialized subnet (elastic), analytic FLOPs/params equal FlopCounterMode
and the subnet's parameter count (cost).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from evaluators.cost import CostModel  # noqa: E402
from search.cifar_resnet import resnet20, resnet56  # noqa: E402
from spaces.derive import derive  # noqa: E402
from spaces.elastic import ElasticModel  # noqa: E402
from spaces.materialize import materialize  # noqa: E402

MODELS = ["resnet20", "resnet56", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
          "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "densenet121", "vgg11_bn", "convnext_tiny",
          "mnasnet0_5", "squeezenet1_1", "shufflenet_v2_x0_5"]


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name in ("resnet20", "resnet56"):
        return {"resnet20": resnet20, "resnet56": resnet56}[name]().eval(), torch.randn(2, 3, 32, 32)
    return torchvision.models.get_model(name, weights=None).eval(), torch.randn(2, 3, 64, 64)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-4 * (b.abs().max().item() + 1e-6)


def row(name: str, rng: np.random.Generator) -> tuple[list[str], dict[str, int]]:
    model, x = build(name)
    with torch.no_grad():
        before = model(x)
        start = time.perf_counter()
        prunable = derive(model, x[:1])
        seconds = time.perf_counter() - start
        reorder_ok = close(model(x), before)
        elastic, cost = ElasticModel(prunable).eval(), CostModel(prunable)
        elastic_ok = cost_ok = True
        for candidate in [prunable.space.smallest(), *(prunable.space.sample(rng) for _ in range(4))]:
            elastic.apply(candidate)
            subnet = materialize(prunable, candidate).eval()
            elastic_ok &= close(elastic(x), subnet(x))
            with FlopCounterMode(display=False) as counter:
                subnet(x[:1])
            price = cost.price(candidate)
            cost_ok &= price.flops == counter.get_total_flops()
            cost_ok &= price.params == sum(p.numel() for p in subnet.parameters())
    graph = prunable.graph
    prunable_ids = {g.id for g in graph.prunable_groups}
    in_blocks = set().union(*(b.branch for b in graph.blocks)) if graph.blocks else set()
    prunable_flops = sum(2 * s.positions * graph.tensors[s.weight].numel() for s in graph.sites
                         if s.node in in_blocks or any(seg.group in prunable_ids
                                                       for u in graph.uses.get(s.weight, []) for seg in u.layout))
    reasons = graph.fixed_reasons()
    ok = lambda b: "pass" if b else "FAIL"  # noqa: E731
    return [name, str(len(graph.groups)), str(len(prunable.space.widths)), str(len(prunable.space.keeps)),
            f"{prunable_flops / cost.base.flops:.1%}",
            f"{cost.price(prunable.space.smallest()).flops / cost.base.flops:.3f}", str(sum(reasons.values())),
            f"{cost.base.flops / 1e6:.1f}", f"{seconds:.2f}", ok(reorder_ok), ok(elastic_ok), ok(cost_ok)], reasons


def main(names: list[str]) -> int:
    rng = np.random.default_rng(0)
    header = ["model", "groups", "widths", "blocks", "prunable FLOPs", "min FLOPs", "frozen", "MFLOPs", "derive s",
              "reorder", "elastic", "cost"]
    rows, all_reasons = [], {}
    for name in names:
        cells, reasons = row(name, rng)
        rows.append(cells)
        for reason, count in reasons.items():
            all_reasons[f"{name}: {reason}"] = count
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\ninputs: 3x32x32 (CIFAR ResNets), 3x64x64 (torchvision); MFLOPs per sample at that size")
    for reason, count in all_reasons.items():
        print(f"frozen: {reason} ({count} groups)")
    return 0 if all(c == "pass" for r in rows for c in r[-3:]) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or MODELS))
