"""Per-candidate cost of scoring a pruned subnet: the engine against the Torch-Pruning way, ResNet-50.

    python benchmarks/candidate_cost.py [--ratios 0.3,0.4,0.5,0.6,0.7] [--rounds 3] [--calib-batches 2]
                                        [--batch-size 16] [--eval-samples 64] [--input-size 64]

torchvision ResNet-50 (weights=None, seeded) at 64x64, random inputs and labels: only time matters.
For each uniform width ratio, on the same cached batches and in the same run:
- ours: `AccuracyEvaluator.score` = elastic apply + BN recalibration + held-out top-1, on the candidate
  `space.uniform(ratio, nearest=True)`;
- Torch-Pruning: what its user writes per candidate: deep copy of the base model, a pruner
  (`MetaPruner` with L1 `GroupMagnitudeImportance`, `pruning_ratio = 1 - ratio` in every layer, the
  classifier ignored; building it traces the DependencyGraph), `pruner.step()`, then the same
  `recalibrate` + `top1` on the same batches. Its four parts are timed separately too.
Each candidate's FLOPs ratio (FlopCounterMode conventions, one sample) is printed for both paths, so
the subnets can be seen to be of comparable size (ratios on the 0.1 grid of the space's widths: a
ratio halfway between two choices, such as 0.75, rounds up to 0.8 in ours but down in Torch-Pruning).
Both paths are warmed up once, then every candidate is timed `rounds` times, the two paths in
alternating order (ours first, then Torch-Pruning first, ...) to cancel drift; medians are printed.
Needs the benchmark extra: pip install -e ".[bench]".
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.torch_pruning_peer import flops as count_flops  # noqa: E402
from benchmarks.torch_pruning_peer import params as count_params  # noqa: E402
from benchmarks.torch_pruning_peer import require as require_torch_pruning  # noqa: E402
from benchmarks.setting import Setting  # noqa: E402
from evaluators.accuracy import recalibrate, top1  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.models.inputs import Inputs  # noqa: E402

NUM_CLASSES = 1000
TP_PARTS = ("deepcopy", "pruner_init", "step", "recalibrate_top1")


def tp_candidate(base: nn.Module, ratio: float, example: torch.Tensor, calibration: Sequence[torch.Tensor],
                 held_out: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[nn.Module, dict[str, float]]:
    """One candidate the Torch-Pruning way; the pruned module and the seconds of each part."""
    tp = require_torch_pruning()
    t0 = time.perf_counter()
    model = copy.deepcopy(base)
    t1 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(  # builds the DependencyGraph (a traced forward on `example`)
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=1.0 - ratio, global_pruning=False, ignored_layers=[model.fc])
    t2 = time.perf_counter()
    pruner.step()
    t3 = time.perf_counter()
    recalibrate(model, calibration)
    top1(model, held_out)
    t4 = time.perf_counter()
    return model, dict(zip(TP_PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)))


def measure(*, ratios: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7), calib_batches: int = 2, batch_size: int = 16,
            eval_samples: int = 64, input_size: int = 64, seed: int = 0, rounds: int = 3) -> dict[str, Any]:
    """Time both paths on each ratio's candidate; medians in ms, FLOPs ratios, settings (a plain dict)."""
    if not ratios or rounds < 1:
        raise ValueError("measure needs at least one ratio and one round")
    require_torch_pruning()
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None, num_classes=NUM_CLASSES).eval()
    shape = (3, input_size, input_size)
    example = torch.randn(1, *shape)
    calibration = [torch.randn(batch_size, *shape) for _ in range(calib_batches)]
    held_out = [(torch.randn(len(chunk), *shape), torch.randint(0, NUM_CLASSES, (len(chunk),)))
                for chunk in torch.arange(eval_samples).split(batch_size)]
    base = copy.deepcopy(model).eval()  # Torch-Pruning's base: the untouched model (derive reorders in place)
    base_flops, base_params = count_flops(base, example), count_params(base)

    config = SearchConfig(agent="random", budget=["1flops"], model="<module>", data="<iterables>", seed=seed,
                          device="cpu")
    setting = Setting.of(config, inputs=Inputs(model=model, example=example, calibration=calibration,
                                                held_out=held_out, name="resnet50"))
    prunable, cost, evaluator = setting.prunable, setting.cost, setting.evaluator
    candidates = [prunable.space.uniform(r, nearest=True) for r in ratios]

    warm = prunable.space.uniform(0.5, nearest=True)  # warm-up, one of each, untimed
    evaluator.score(warm)
    tp_candidate(base, 0.5, example, evaluator.calibration, evaluator.held_out)

    tp_parts: dict[str, list[float]] = {p: [] for p in TP_PARTS}
    ours_by: list[list[float]] = [[] for _ in ratios]
    tp_by: list[list[float]] = [[] for _ in ratios]
    pruned: list[nn.Module | None] = [None for _ in ratios]
    order = [j for _ in range(rounds) for j in range(len(ratios))]
    for i, j in enumerate(order):
        for path in (("ours", "tp") if i % 2 == 0 else ("tp", "ours")):
            start = time.perf_counter()
            if path == "ours":
                evaluator.score(candidates[j])
                ours_by[j].append(time.perf_counter() - start)
            else:
                module, parts = tp_candidate(base, ratios[j], example, evaluator.calibration, evaluator.held_out)
                tp_by[j].append(time.perf_counter() - start)
                for name, seconds in parts.items():
                    tp_parts[name].append(seconds)
                pruned[j] = module  # keep the last one of each ratio, for its FLOPs (outside the timing)
    evaluator.restore()

    per_candidate: list[dict[str, float]] = []
    for j, (ratio, candidate, module) in enumerate(zip(ratios, candidates, pruned)):
        assert module is not None
        with torch.no_grad():
            out_shape = tuple(module.eval()(example).shape)
        if out_shape != (1, NUM_CLASSES):
            raise RuntimeError(f"Torch-Pruning's subnet at ratio {ratio} gives outputs {out_shape}")
        ours_costs = cost.price(candidate)
        per_candidate.append({
            "ratio": float(ratio),
            "ours_flops_ratio": ours_costs.flops / cost.base.flops,
            "tp_flops_ratio": count_flops(module, example) / base_flops,
            "ours_params_ratio": ours_costs.params / cost.base.params,
            "tp_params_ratio": count_params(module) / base_params,
            "ours_ms": statistics.median(ours_by[j]) * 1e3,
            "tp_ms": statistics.median(tp_by[j]) * 1e3,
        })
    del pruned

    ours_ms = statistics.median(t for times in ours_by for t in times) * 1e3
    tp_ms = statistics.median(t for times in tp_by for t in times) * 1e3
    calib, held = evaluator.samples
    return {
        "ours_ms": ours_ms,
        "tp_ms": tp_ms,
        "tp_breakdown_ms": {name: statistics.median(v) * 1e3 for name, v in tp_parts.items()},
        "ratio": tp_ms / ours_ms,
        "candidates": per_candidate,
        "base_flops": {"ours": cost.base.flops, "flop_counter": base_flops},
        "settings": {
            "model": "torchvision resnet50", "ratios": [float(r) for r in ratios], "calib_batches": calib_batches,
            "batch_size": batch_size, "eval_samples": eval_samples, "input_size": input_size, "seed": seed,
            "rounds": rounds, "timed_per_path": len(order),
            "calibration_samples": calib, "held_out_samples": held, "torch": torch.__version__,
            "torch_pruning": getattr(require_torch_pruning(), "__version__", "?"),
            "threads": torch.get_num_threads(),
        },
    }


def markdown(r: dict[str, Any]) -> list[str]:
    """The figures of `measure` as markdown lines (for the benchmark report)."""
    s, b = r["settings"], r["tp_breakdown_ms"]
    lines = [f"{s['calibration_samples']} calibration + {s['held_out_samples']} held-out samples per candidate, "
             f"{s['rounds']} rounds x {len(s['ratios'])} candidates per path, alternating order.", "",
             "| width ratio | FLOPs ours | FLOPs TP | ours ms | TP ms |", "|---|---|---|---|---|"]
    lines += [f"| {c['ratio']:.2f} | {c['ours_flops_ratio']:.3f} | {c['tp_flops_ratio']:.3f} | {c['ours_ms']:.1f} | "
              f"{c['tp_ms']:.1f} |" for c in r["candidates"]]
    lines += ["", f"Median per candidate: ours {r['ours_ms']:.1f} ms; the Torch-Pruning loop {r['tp_ms']:.1f} ms "
              f"(deep copy {b['deepcopy']:.1f} + pruner and dependency graph {b['pruner_init']:.1f} + pruning step "
              f"{b['step']:.1f} + recalibration and top-1 {b['recalibrate_top1']:.1f}): **x{r['ratio']:.1f}**."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.3,0.4,0.5,0.6,0.7", help="uniform width ratios, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timings of each candidate, per path")
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    require_torch_pruning()  # exits with the install line if it is missing
    r = measure(ratios=[float(x) for x in args.ratios.split(",")], calib_batches=args.calib_batches,
                batch_size=args.batch_size, eval_samples=args.eval_samples, input_size=args.input_size,
                seed=args.seed, rounds=args.rounds)
    s = r["settings"]
    print(f"{s['model']}, {s['input_size']}x{s['input_size']}, torch {s['torch']}, torch-pruning "
          f"{s['torch_pruning']}, {s['threads']} threads; per candidate {s['calibration_samples']} calibration + "
          f"{s['held_out_samples']} held-out samples; {s['rounds']} rounds x {len(s['ratios'])} candidates per path")
    print(f"base FLOPs (1 sample): cost model {r['base_flops']['ours'] / 1e6:.1f} M, "
          f"FlopCounterMode {r['base_flops']['flop_counter'] / 1e6:.1f} M")
    print(f"{'ratio':>6} {'FLOPs ours':>11} {'FLOPs TP':>9} {'params ours':>12} {'params TP':>10} "
          f"{'ours ms':>9} {'TP ms':>9}  (FLOPs/params: x base; ms: medians)")
    for c in r["candidates"]:
        print(f"{c['ratio']:6.2f} {c['ours_flops_ratio']:11.3f} {c['tp_flops_ratio']:9.3f} "
              f"{c['ours_params_ratio']:12.3f} {c['tp_params_ratio']:10.3f} {c['ours_ms']:9.1f} {c['tp_ms']:9.1f}")
    b = r["tp_breakdown_ms"]
    print(f"ours (apply + recalibrate + top-1)  : median {r['ours_ms']:8.1f} ms")
    print(f"Torch-Pruning path                  : median {r['tp_ms']:8.1f} ms = deepcopy {b['deepcopy']:.1f} "
          f"+ pruner/DependencyGraph {b['pruner_init']:.1f} + step {b['step']:.1f} "
          f"+ recalibrate/top-1 {b['recalibrate_top1']:.1f} (medians)")
    print(f"Torch-Pruning path / ours: x{r['ratio']:.1f}")


if __name__ == "__main__":
    main()
