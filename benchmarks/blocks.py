"""Block coverage: per model, its residual adds, the removable blocks offered, why the rest are not, and
whether costs stay exact with blocks removed.

    python benchmarks/blocks.py [MODEL ...]        # tv:NAME (torchvision) or timm:NAME; default: the list below

Columns: residual adds (adds of two tensors computed from the input), blocks offered (keep flags),
stages (runs of consecutive blocks: the stage-depth dimensions), adds not offered, whether analytic
FLOPs and params equal FlopCounterMode on the full model (cost full: a model failing it fails below
for reasons of its own, not its blocks), then three checks on
two candidates with every other block removed (all widths full, and random widths): analytic FLOPs
and params equal FlopCounterMode and the parameters of the materialized subnet (cost), the elastic
model's output equals the subnet's (elastic), and the stage-depth space prices its smallest candidate
exactly too (depth). Input 3x64x64, weights random (`pretrained=False`). The reasons for the adds not
offered are listed below the table, grouped per reason.
"""
from __future__ import annotations

import re
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
from spaces.blocks import analyze  # noqa: E402
from spaces.derive import derive  # noqa: E402
from spaces.elastic import ElasticModel  # noqa: E402
from spaces.materialize import materialize  # noqa: E402

MODELS = ["tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "tv:mobilenet_v3_small", "tv:efficientnet_b0",
          "tv:regnet_y_400mf", "tv:convnext_tiny", "tv:mnasnet0_5",
          "timm:resnet50d", "timm:efficientnet_b0", "timm:mobilenetv2_100", "timm:convnext_atto",
          "timm:regnety_008", "timm:mobilenetv3_small_100", "timm:mixnet_s", "timm:ghostnet_100",
          "timm:convnextv2_atto", "timm:seresnext26d_32x4d", "timm:rexnet_100", "timm:dla34"]


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    source, _, model = name.partition(":")
    if source == "timm":
        import timm

        return timm.create_model(model, pretrained=False).eval()
    return torchvision.models.get_model(model, weights=None).eval()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= 1e-4 * (b.abs().max().item() + 1e-6)


def exact(prunable, candidate, x: torch.Tensor) -> bool:
    cost = CostModel(prunable)
    subnet = materialize(prunable, candidate).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        subnet(x[:1])
    price = cost.price(candidate)
    return price.flops == counter.get_total_flops() and price.params == sum(p.numel() for p in subnet.parameters())


def check(what, *args) -> str:
    try:
        return "pass" if what(*args) else "FAIL"
    except Exception as error:  # a model the channel analysis cannot yet run (see the error below the table)
        check.errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
        return "error"


check.errors = []


def row(name: str, rng: np.random.Generator) -> tuple[list[str], dict[str, str]]:
    model = build(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    prunable = derive(model, x[:1])
    seconds = time.perf_counter() - start
    analysis = analyze(prunable.graph)
    space = prunable.space
    every_other = space.full().replace(**{d.name: 0 for d in space.keeps[::2]})
    widths = space.sample(rng).replace(**{d.name: every_other[d.name] for d in space.keeps})
    candidates = [every_other, widths] if space.keeps else []

    def costs() -> bool:
        return all(exact(prunable, c, x) for c in candidates)

    def elastic() -> bool:
        model = ElasticModel(prunable).eval()
        ok = True
        for c in candidates:
            model.apply(c)
            with torch.no_grad():
                ok &= close(model(x), materialize(prunable, c).eval()(x))
        return ok

    def depth() -> bool:
        stages = derive(build(name), x[:1], importance=None, block_encoding="depth")
        return len(stages.space.keeps) == len(analysis.runs) and exact(stages, stages.space.smallest(), x)

    cells = [name, str(len(analysis.adds)), str(len(space.keeps)), str(len(analysis.runs)),
             str(len(prunable.block_reasons)), str(len(space.widths)), f"{seconds:.1f}"]
    cells.append(check(exact, prunable, space.full(), x))
    if candidates:
        cells += [check(costs), check(elastic), check(depth)]
    else:
        cells += ["-", "-", "-"]
    return cells, prunable.block_reasons


def main(names: list[str]) -> int:
    rng = np.random.default_rng(0)
    header = ["model", "residual adds", "offered", "stages", "not offered", "widths", "derive s", "cost full",
              "cost", "elastic", "depth"]
    rows, reasons = [], {}
    for name in names:
        try:
            cells, why = row(name, rng)
        except Exception as error:
            cells, why = [name, "trace failed", *["-"] * (len(header) - 2)], {}
            check.errors.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
        rows.append(cells)
        for block, reason in why.items():  # grouped by the reason without its particulars
            general = re.sub(r"'[^']*'", "'.'", re.sub(r" [(][^)]*[)]|(?<=block) \S+", "", reason))
            reasons.setdefault(f"{name}: {general}", []).append(block)
        print(" | ".join(cells), file=sys.stderr, flush=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    adds = sum(int(r[1]) for r in rows if r[1].isdigit())
    offered = sum(int(r[2]) for r in rows if r[2].isdigit())
    checked = [c for r in rows for c in r[-4:] if c != "-"]
    print(f"\ntotal: {adds} residual adds, {offered} offered as removable blocks, {adds - offered} not offered "
          f"(each with a reason); checks {checked.count('pass')} pass, {checked.count('FAIL')} fail, "
          f"{checked.count('error')} error of {len(checked)}")
    print("derive s: seconds to derive the space on this machine (shared CPU, inflated by load)")
    for reason, blocks in reasons.items():
        print(f"not offered: {reason} (x{len(blocks)}: {', '.join(blocks[:4])}{', ...' if len(blocks) > 4 else ''})")
    for error in check.errors:
        print(f"error: {error}")
    return 0 if all(c in ("pass", "-") for r in rows for c in r[-4:]) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or MODELS))
