"""Does the refit's head start last? One subnet fine-tuned from its copied weights and from our refit copy.

    PRUNESEARCH_CACHE=/tmp/prunesearch-cache OMP_NUM_THREADS=1 python benchmarks/refit_longer.py \\
        --model resnet20 --budget 0.1flops --epochs 1,5,30 --seeds 0,1

The subnet is Torch-Pruning's global-magnitude subnet at the budget (`benchmarks/torch_pruning_peer.py`, the
fair report's peer), on hard digits with the report's cached baseline. It is fine-tuned with the report's common
recipe (`search.finetune.finetune_module`, seeded) from:
- copied: the weights Torch-Pruning left (as its tool exports them);
- refit: our least-squares refit to the full model's outputs (`spaces.reconstruct`, `--reconstruct` N inputs,
  what search.run exports by default);
- refit rescaled (`--rescaled`): the refit, each convolution's output channel scaled back to the copied row's
  norm and the BatchNorm after it given the matching running statistics (the same function, up to eps): the
  norm alone, without the refit's direction;
- refit ridge=r (`--ridge 0.1,1,3`): the refit at other ridge strengths toward the copied weights (0.1: the
  default of `spaces.reconstruct`), one start each.
Printed first: per convolution followed by a BatchNorm, the median over channels of the refit row's norm over
the copied row's. Behind BatchNorm, a larger norm is a smaller effective learning rate.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks import torch_pruning_peer as tp_peer  # noqa: E402
from search.finetune import finetune_module  # noqa: E402
from search.finetune.step import evaluate  # noqa: E402


def conv_bn_pairs(module: nn.Module):
    """(Conv2d, the BatchNorm2d that follows it) in module order, for the CIFAR-style nets of the report."""
    modules = list(module.modules())
    for i, conv in enumerate(modules):
        if isinstance(conv, nn.Conv2d):
            bn = next((m for m in modules[i + 1:i + 3]
                       if isinstance(m, nn.BatchNorm2d) and m.num_features == conv.out_channels), None)
            if bn is not None:
                yield conv, bn


def rescaled(refit: nn.Module, copied: nn.Module) -> tuple[nn.Module, list[float]]:
    """A copy of `refit` with each BatchNorm'd convolution's rows at the copied rows' norms; the norm ratios."""
    out, ratios = copy.deepcopy(refit), []
    for (conv, bn), (base, _) in zip(conv_bn_pairs(out), conv_bn_pairs(copied)):
        scale = conv.weight.detach().flatten(1).norm(dim=1) / base.weight.detach().flatten(1).norm(dim=1).clamp_min(
            1e-12)
        ratios.append(float(scale.median()))
        with torch.no_grad():
            conv.weight /= scale.view(-1, 1, 1, 1)
            bn.running_mean /= scale
            bn.running_var /= scale ** 2
    return out, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budget", default="0.1flops")
    parser.add_argument("--epochs", default="1,5,30", help="fine-tune lengths, comma-separated")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--reconstruct", type=int, default=1024, help="training inputs of the refit")
    parser.add_argument("--rescaled", action="store_true", help="also the refit rescaled to the copied norms")
    parser.add_argument("--ridge", default="0.1", help="the refit's ridge toward the copied weights "
                        "(spaces.reconstruct); several, comma-separated, give one refit start each")
    parser.add_argument("--baseline-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    study_args = argparse.Namespace(plan=[report.Step.parse(f"{args.budget}/1/0")], data=report.HARD_DIGITS,
                                    pruningnet_epochs=5, baseline_epochs=args.baseline_epochs,
                                    reconstruct=args.reconstruct, export_weights=None, width_grid=10,
                                    out=report.ROOT / "docs" / "benchmarks.md", new_baseline=False)
    study = report.Study(args.model, study_args, None)
    pruned = tp_peer.prune_to_flops(study.base_model, study.example, "global", float(args.budget.removesuffix("flops")))
    inputs = study.setting.at(args.budget).reconstructor(study.prunable).inputs
    ridges = [float(r) for r in args.ridge.split(",")]
    print(f"{args.model} at {args.budget}: Torch-Pruning global magnitude, FLOPs x{pruned.flops_ratio:.3f}; refit on "
          f"{args.reconstruct} inputs")
    starts: dict[str, nn.Module] = {"copied": pruned.module}
    for ridge in ridges:
        name = "refit" if len(ridges) == 1 else f"refit ridge={ridge:g}"
        starts[name] = copy.deepcopy(pruned.module)
        tp_peer.refit(starts[name], study.base_model, inputs, ridge=ridge)
        scaled, ratios = rescaled(starts[name], pruned.module)
        print(f"{name} / copied row norm per BatchNorm'd convolution (median over channels):",
              " ".join(f"{r:.2f}" for r in ratios))
        if args.rescaled:
            starts[f"{name} rescaled"] = scaled
    print("test top-1 before the fine-tune:", ", ".join(f"{n} {evaluate(m, study.test_loader):.4f}"
                                                        for n, m in starts.items()))
    print(f"\n| epochs | seed | {' | '.join(starts)} |\n|---|---|{'---|' * len(starts)}", flush=True)
    for epochs in (int(e) for e in args.epochs.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            after = [finetune_module(copy.deepcopy(m), study.data, epochs=epochs, seed=seed)[1][-1]["test_top1"]
                     for m in starts.values()]
            print(f"| {epochs} | {seed} | {' | '.join(f'{a:.4f}' for a in after)} |", flush=True)


if __name__ == "__main__":
    main()
