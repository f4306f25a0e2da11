"""Racing and fewer calibration batches against full scoring: forward work, top-10 and winner, same candidates.

    python benchmarks/racing.py [--models resnet20,resnet56,torchvision:mobilenet_v2] [--candidates 200]

Per model (the cached baseline on digits, as the default job trains it; the torchvision model on digits
upscaled to 3x64x64, `digits64` below, trained once here and cached the same way), the random agent's
first `--candidates` proposals at `--budget` (the default job's candidates, warm start included) are
scored four ways, in the same run, candidate by candidate (the order of the four alternates):

- full-8  : 8 calibration batches of 64, every held-out sample (the scoring before racing);
- raced-8 : the same calibration, racing on (top-10 bar, confidence 0.99, chunks of 64);
- full-K  : `--calib-batches` batches (the new default), every held-out sample;
- raced-K : the new default: K batches and racing.

Forward work is samples through the network per candidate (calibration + held-out scored), and
seconds. Each way's top-10 (fully scored candidates first, as `best_trial` ranks) and winner are
compared with those of full scoring at the same calibration (racing alone) and with full-8 (the old
default). The held-out samples are the same shuffled chunks in all four ways, so a fully scored
candidate gets the same score raced or not.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from benchmarks.calibration import candidate_list  # noqa: E402
from benchmarks.setting import Setting  # noqa: E402
from evaluators.racing import TopK  # noqa: E402
from search.models.baseline import baseline_files, trained_baseline  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.models.zoo import load_data, load_model  # noqa: E402

DIGITS64 = "benchmarks.racing:digits64"


def digits64() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits (the zoo's split and normalisation) upscaled to 3x64x64 (bilinear)."""
    data = load_data("digits")

    def up(dataset) -> TensorDataset:
        x, y = dataset.tensors
        return TensorDataset(F.interpolate(x, size=64, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1), y)

    return up(data.train), up(data.test)


def weights_for(model: str, epochs: int) -> str | None:
    """A torchvision model trained on digits64 once (cached like the zoo's baselines); None for the zoo models."""
    if not model.startswith("torchvision:"):
        return None
    data = load_data(DIGITS64)
    path, _ = baseline_files(model, DIGITS64, seed=0, epochs=epochs, batch_size=64, held_out=0.2)
    if not path.exists():
        net = load_model(model, num_classes=data.num_classes, input_shape=data.input_shape)
        print(f"training {model} on digits64 for {epochs} epochs (once, cached)...", flush=True)
        trained_baseline(net, model, DIGITS64, data, epochs=epochs, seed=0, batch_size=64, device=torch.device("cpu"),
                         progress=False)
    return str(path)


def ranked(scores: list[float], samples: list[int], total: int, flops: list[float]) -> list[int]:
    """Candidate indices as `best_trial` ranks them: fully scored first, then score, fewer FLOPs, earlier."""
    return sorted(range(len(scores)), key=lambda i: (samples[i] < total, -scores[i], flops[i], i))


def measure(model: str, *, candidates: int, budget: str, calib_batches: int, epochs: int, top_k: int = 10) -> dict:
    config = SearchConfig(agent="random", budget=[budget], model=model, data="digits" if "torchvision" not in model
                          else DIGITS64, weights=weights_for(model, epochs), seed=0, device="cpu", calib_batches=8,
                          batch_size=64, racing_top_k=top_k)
    setting = Setting.of(config)
    evaluator = setting.evaluator
    calibration = list(evaluator.calibration)
    total = evaluator.samples[1]
    cands = candidate_list(setting, budget, candidates)
    flops = [setting.price(c)["flops"] for c in cands]
    ways = {"full-8": (8, False), "raced-8": (8, True), f"full-{calib_batches}": (calib_batches, False),
            f"raced-{calib_batches}": (calib_batches, True)}
    out = {w: {"scores": [], "samples": [], "seconds": [], "calib": 0} for w in ways}
    tops = {w: TopK(top_k) for w in ways}
    evaluator.estimate(cands[0])  # warm-up
    for i, candidate in enumerate(cands):
        order = list(ways) if i % 2 == 0 else list(ways)[::-1]
        for way in order:
            k, racing = ways[way]
            evaluator.calibration = calibration[:k]
            start = time.perf_counter()
            e = evaluator.estimate(candidate, tops[way].bar if racing else None)
            seconds = time.perf_counter() - start
            if not e.raced:
                tops[way].add(e.score)
            r = out[way]
            r["scores"].append(e.score)
            r["samples"].append(e.samples)
            r["seconds"].append(seconds)
            r["calib"] = sum(len(x) for x in calibration[:k])
    evaluator.calibration = calibration
    evaluator.restore()
    for way, r in out.items():
        r["rank"] = ranked(r["scores"], r["samples"], total, flops)
        r["work"] = statistics.mean(r["calib"] + s for s in r["samples"])
        r["raced"] = sum(s < total for s in r["samples"])
    return {"model": model, "candidates": len(cands), "total": total, "ways": out, "k": calib_batches,
            "space": str(setting.prunable.space)}


def report(m: dict, top_k: int = 10) -> None:
    ways, k = m["ways"], m["k"]
    base = ways["full-8"]
    print(f"\n{m['model']} on {'digits64 (3x64x64)' if 'torchvision' in m['model'] else 'digits'}: "
          f"{m['candidates']} random-agent candidates, {m['total']} held-out samples")
    print(f"{'way':>9} {'samples/cand':>12} {'x work':>7} {'ms/cand':>8} {'x time':>7} {'raced':>6} "
          f"{'top-10 vs same calib':>20} {'winner':>7} {'top-10 vs full-8':>16} {'winner':>7}")
    for way, r in ways.items():
        ref = ways["full-8"] if way.endswith("-8") else ways[f"full-{k}"]
        same = len(set(r["rank"][:top_k]) & set(ref["rank"][:top_k]))
        old = len(set(r["rank"][:top_k]) & set(base["rank"][:top_k]))
        print(f"{way:>9} {r['work']:12.1f} {r['work'] / base['work']:7.3f} {1e3 * statistics.mean(r['seconds']):8.2f} "
              f"{sum(r['seconds']) / sum(base['seconds']):7.3f} {r['raced']:6d} {same:17d}/10 "
              f"{'same' if r['rank'][0] == ref['rank'][0] else 'OTHER':>7} {old:13d}/10 "
              f"{'same' if r['rank'][0] == base['rank'][0] else 'OTHER':>7}")
    w = ways[f"raced-{k}"]["rank"][0]
    print(f"winner of raced-{k}: candidate {w}, full-8 score {base['scores'][w]:.4f}; winner of full-8: candidate "
          f"{base['rank'][0]}, {base['scores'][base['rank'][0]]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet56,torchvision:mobilenet_v2")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--budget", default="0.4flops")
    parser.add_argument("--calib-batches", type=int, default=SearchConfig.calib_batches,
                        help="the calibration of the new default (compared with 8)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of a torchvision model on digits64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU; racing: top-10 bar, confidence 0.99, chunks of 64 held-out "
          f"samples; machine shared and loaded: seconds are inflated, samples are exact")
    for model in args.models.split(","):
        report(measure(model, candidates=args.candidates, budget=args.budget, calib_batches=args.calib_batches,
                       epochs=args.epochs))


if __name__ == "__main__":
    main()
