"""Proxy fidelity: how well each signal that ranks candidates (the search's proxy, the finalists' short
fine-tunes, each rung of successive halving, a supernet's weights) ranks them by their test top-1 after the
common fine-tune, the model the user keeps; and what picking among the top few by a short fine-tune gains.

    OMP_NUM_THREADS=1 PRUNESEARCH_CACHE=/tmp/prunesearch-cache python benchmarks/fidelity.py   # the 0.1 x study
    python benchmarks/fidelity.py --render-only      # docs/benchmarks/fidelity.md from its rows
    python benchmarks/fidelity.py --quick            # 8 candidates, short everything (a smoke run)

Setting (the fair report's headline, `benchmarks/report.py`): ResNet-20 on hard digits (`benchmarks/hard_digits.py`),
its zoo baseline trained 10 epochs (cached), 0.1 x FLOPs, truth = test top-1 (10080 images) after one common
1-epoch fine-tune (`search.finetune.finetune_module`, seeded) from the base weights, BN-recalibrated first.

Candidates (`--pool`): `search` (default) takes a search's own pool, the candidates that matter: `--agent`
(tpe) runs `--trials` (100) trials at the budget, and of its distinct scored subnets between `--low` (0.7)
x and 1 x the budget, `--candidates` (30) are taken evenly spaced over the proxy's order, its best included;
`uniform` draws them uniformly from that FLOPs range (rejection sampling; slow at 0.1 x).

Signals (higher is better for all; `_neg_ce` is minus the held-out cross-entropy):
- bn_top1, bn_neg_ce, bn_neg_tce, bn_neg_kl: held-out top-1 / cross-entropy / cross-entropy at its best
  temperature (`search.selection.finalists.tempered_ce`) / minus KL to the base model's outputs, after BN
  recalibration (the search's proxy is bn_top1; search.run's default finalists re-rank its top 10 by bn_neg_tce);
- pruningnet: held-out top-1 with MetaPruning's generated weights (`--pruningnet-epochs` > 0);
- steps_S_top1, steps_S_neg_ce: after S (`--steps`, 50) SGD steps from the base weights, BN recalibrated, as one
  finalist (`search.selection.finalists.train_finalist`, the finalists' own recipe and seeds);
- default_pick: minus the sum of the ranks of steps_S_neg_ce and bn_top1 (`--finalist-steps S --finalist-rank
  ce+proxy`, the default before untrained finalists), the signal that picked that pipeline's export;
- rung_T_top1, rung_T_neg_ce: the same after each rung of `--rungs` (20,80,320), trained on from the previous rung
  exactly as `run_finalists` trains a finalist that goes on (every candidate goes through every rung here);
- truth_other_seed: the truth's own fine-tune with the next seed: the noise ceiling (no signal can rank the truth
  much better than the truth ranks itself); with `--truth-seeds N` > 2, truth_seed_2 .. truth_seed_{N-1} too, and
  every signal is also ranked against the mean of the N truths (truth_mean), whose own ceiling is the split-half
  Spearman (the mean of the even seeds against the mean of the odd ones);
- recon_top1, recon_neg_tce: held-out top-1 / tempered cross-entropy of the subnet as search.run builds it
  (`--reconstruct` N, default 1024 training inputs: its layers refit to the full model's outputs,
  `spaces.reconstruct`), BN-recalibrated; search.run's default finalists re-rank its top 10 by recon_neg_tce;
- recon_truth, recon_truth_other_seed (not signals): the truth fine-tuned from those refit weights (what
  search.run exports), with the fine-tune's seed and the next; the rows are ranked against it in a table of their own;
  with `--recon-truth-seeds N` > 2, recon_truth_seed_2 .. recon_truth_seed_{N-1} too, and the rows are also ranked
  against their mean (recon_truth_mean), with its split-half noise ceiling from 4 seeds on;
- rung_truth (not a signal): the truth fine-tuned from the weights the last rung left (what the rungs export),
  against which the rung signals are ranked in a table of their own;
- supernet_top1: held-out top-1 after BN recalibration on the weights of a supernet trained `--supernet-epochs`
  (2) epochs by `search.finetune.supernet.train_supernet` (sandwich rule, within the budget, as `--supernet-epochs`
  trains it); with `--supernet-truth`, also the truth of each candidate fine-tuned from those weights
  (what the supernet pipeline exports), as supernet_truth.
Printed: Spearman and Kendall rank correlation of each signal with the truth, the overlap of its top-5 with
the truth's top-5, and the truth of its pick. Then the selection study: over 2000 random subsets of 20 of the
candidates, the truth of the candidate picked by bn_top1 alone and by the finalists' rules. Rows are kept in
`docs/benchmarks/fidelity_rows.json` (one per candidate, every signal), so a run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.setting import Setting  # noqa: E402
from search.engine.config import SearchConfig  # noqa: E402
from search.engine.loop import Engine  # noqa: E402
from search.finetune import finetune_module  # noqa: E402
from search.finetune.supernet import SupernetSettings, train_supernet  # noqa: E402
from spaces.reconstruct import default_inputs  # noqa: E402
from search.selection.finalists import (FinalistSettings, ShuffledBatches, held_out_loss, score_module,  # noqa: E402
                                        tempered_ce, train_finalist)
from spaces.materialize import materialize  # noqa: E402
from spaces.sampling import feasible_sampler  # noqa: E402
from spaces.space import Candidate  # noqa: E402

HARD_DIGITS = "benchmarks.hard_digits:hard_digits"
ROWS = ROOT / "docs" / "benchmarks" / "fidelity_rows.json"
OUT = ROOT / "docs" / "benchmarks" / "fidelity.md"
def near_budget(setting: Setting, budget: str, count: int, seed: int, low: float = 0.7) -> list[Candidate]:
    """`count` distinct candidates drawn uniformly among those with low x cap <= FLOPs <= cap."""
    pipeline = setting.at(budget)
    cap = pipeline.budget.caps["flops"]
    rng = np.random.default_rng(seed)
    space = setting.prunable.space
    found: dict[Candidate, None] = {}
    for _ in range(200_000):
        candidate = space.sample(rng)
        flops = setting.price(candidate)["flops"]
        if low * cap <= flops <= cap:
            found.setdefault(candidate)
            if len(found) == count:
                break
    if len(found) < count:
        raise SystemExit(f"only {len(found)} candidates found between {low} x and 1 x the budget")
    return list(found)


def search_pool(setting: Setting, budget: str, count: int, seed: int, agent: str, trials: int,
                low: float = 0.7) -> list[Candidate]:
    """`count` of a search's distinct scored subnets between low x cap and cap, evenly spaced over the proxy's
    order (its best first); candidates that differ only inside removed blocks are one subnet
    (`PrunableModel.canonical`), taken once."""
    pipeline = setting.at(budget)
    cap = pipeline.budget.caps["flops"]
    searcher = pipeline.agent(setting.prunable, setting.price, name=agent, seed=seed, trials=trials)
    outcome = Engine(searcher, setting.price, setting.budget(budget), setting.evaluator, trials=trials,
                     progress=False, canonical=setting.prunable.canonical).run()
    setting.evaluator.restore()
    scored: dict[Candidate, float] = {}
    for trial in outcome.trials:
        r = trial.result
        if r.ok and r.score is not None and low * cap <= r.costs.get("flops", 0) <= cap:
            scored.setdefault(setting.prunable.canonical(trial.candidate), r.score)
    ranked = sorted(scored, key=lambda c: -scored[c])
    if len(ranked) < count:
        raise SystemExit(f"the search scored only {len(ranked)} distinct subnets between {low} x and 1 x the "
                         f"budget; ask for fewer (--candidates) or more trials (--trials)")
    return [ranked[i] for i in sorted({round(float(i)) for i in np.linspace(0, len(ranked) - 1, count)})]


def key_of(candidate: Candidate) -> str:
    return json.dumps(dict(sorted(candidate.items())))


@torch.no_grad()
def bn_proxies(setting: Setting, candidate: Candidate, base_logp: list[torch.Tensor]) -> dict[str, float]:
    """bn_top1, bn_neg_ce, bn_neg_tce and bn_neg_kl of one candidate (one recalibration, one held-out pass)."""
    evaluator = setting.evaluator
    top1 = evaluator.score(candidate)  # leaves the elastic model at the candidate, recalibrated, in eval mode
    ce = kl = 0.0
    total = 0
    logits, labels = [], []
    for (x, y), teacher in zip(evaluator.held_out, base_logp):
        out = evaluator.elastic(x)
        logits.append(out.float())
        labels.append(y)
        logp = F.log_softmax(out, dim=1)
        ce += F.nll_loss(logp, y, reduction="sum").item()
        kl += F.kl_div(logp, teacher, reduction="sum", log_target=True).item()
        total += y.numel()
    return {"bn_top1": top1, "bn_neg_ce": -ce / total, "bn_neg_kl": -kl / total,
            "bn_neg_tce": -tempered_ce(torch.cat(logits), torch.cat(labels))}


def trained_signals(setting: Setting, candidate: Candidate, batches: ShuffledBatches, settings: FinalistSettings,
                    schedule: tuple[int, ...], prefix: str) -> tuple[dict[str, float], torch.nn.Module]:
    """`{prefix}_T_top1` and `{prefix}_T_neg_ce` after each total T of `schedule`, trained from the base weights
    exactly as `run_finalists` trains a finalist through its rungs (rung r: seed + r, the steps since the last);
    and the module as the last rung left it (recalibrated)."""
    evaluator = setting.evaluator
    module = materialize(setting.prunable, candidate)
    out, done = {}, 0
    for rung, total in enumerate(schedule):
        step = dataclasses.replace(settings, steps=total - done, seed=settings.seed + rung)
        module, score, _, _, loss = train_finalist(module, 0, step, batches, evaluator.calibration,
                                                   evaluator.held_out, None, None, evaluator.device)
        out[f"{prefix}_{total}_top1"], out[f"{prefix}_{total}_neg_ce"] = score, -loss
        done = total
    return out, module


def truth_of(setting: Setting, candidate: Candidate, epochs: int, seed: int,
             module: torch.nn.Module | None = None) -> float:
    """Test top-1 of `candidate` after the common fine-tune from the prunable model's current weights (or from
    `module`, its subnet as something else left it)."""
    if module is None:
        module = setting.evaluator.recalibrated(materialize(setting.prunable, candidate))
    _, history = finetune_module(module, setting.inputs.data, epochs=epochs, seed=seed, device=setting.evaluator.device)
    return history[-1]["test_top1"]


def fidelity(model: str = "resnet20", budget: str = "0.1flops", candidates: int = 30, finetune_epochs: int = 1,
             steps: int = 50, pruningnet_epochs: int = 0, seed: int = 0, lr: float = SearchConfig.finalist_lr,
             progress: bool = True, data: str = HARD_DIGITS, baseline_epochs: int = 10, *,
             rungs: tuple[int, ...] = (20, 80, 320), supernet_epochs: float = 2, supernet_truth: bool = False,
             pool: str = "search", agent: str = "tpe", trials: int = 100, low: float = 0.7,
             truth_seeds: int = 2, rows_path: Path | None = None, reconstruct: int | None = None,
             recon_truth_seeds: int = 2) -> dict:
    """Every signal and the truth for `candidates` candidates; see the module docstring. With `rows_path`,
    what is already there is kept and only what is missing is measured (saved after each candidate)."""
    def say(text: str) -> None:
        if progress:
            print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {text}", flush=True)

    config = SearchConfig(agent="random", budget=[budget], model=model, data=data, seed=seed, no_warm_start=True,
                          pruningnet_epochs=max(1, pruningnet_epochs), baseline_epochs=baseline_epochs, device="cpu",
                          reconstruct=reconstruct)
    setting_key = (f"{model}|{data}|baseline={baseline_epochs}|{budget}|seed={seed}|pool={pool}:{agent}x{trials}"
                   f"|low={low}|n={candidates}|ft={finetune_epochs}|lr={lr}")
    stored = json.loads(rows_path.read_text()) if rows_path is not None and rows_path.is_file() else {}
    rows_by_key: dict[str, dict] = stored.get(setting_key, {}).get("rows", {})
    meta = {"model": model, "data": data, "budget": budget, "finetune_epochs": finetune_epochs, "steps": steps,
            "rungs": list(rungs), "pool": pool, "agent": agent, "trials": trials, "low": low,
            "supernet_epochs": supernet_epochs, "pruningnet_epochs": pruningnet_epochs, "reconstruct": reconstruct}

    def save() -> None:
        if rows_path is not None:
            stored[setting_key] = {"meta": meta, "rows": rows_by_key}
            rows_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = rows_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored, indent=1))
            tmp.replace(rows_path)

    started = time.perf_counter()
    setting = Setting.of(config)
    bundle = setting.inputs.data
    evaluator = setting.evaluator
    if rows_by_key and len(rows_by_key) == candidates:
        pool_ = [Candidate(json.loads(k)) for k in rows_by_key]
    else:
        say(f"{model} at {budget}: the candidate pool ({pool})")
        pool_ = (search_pool(setting, budget, candidates, seed, agent, trials, low) if pool == "search"
                 else near_budget(setting, budget, candidates, seed, low))
    rows = [rows_by_key.setdefault(key_of(c), {}) for c in pool_]
    meta.update(base_test=setting.inputs.base_test, held_out=evaluator.samples[1])
    with torch.no_grad():
        evaluator.restore()
        base_logp = [F.log_softmax(evaluator.elastic(x), dim=1) for x, _ in evaluator.held_out]
    for row, c in zip(rows, pool_):
        if "bn_neg_tce" not in row:  # rows from before the tempered cross-entropy gain it (the rest is unchanged)
            row.update(bn_proxies(setting, c, base_logp))
        row["flops_ratio"] = setting.price(c)["flops"] / setting.base["flops"]
    evaluator.restore()
    save()

    if pruningnet_epochs > 0 and any("pruningnet" not in r for r in rows):
        from evaluators.pruningnet import PruningNetEvaluator

        net = setting.at(budget).train_pruningnet(setting.prunable, setting.price)
        scorer = PruningNetEvaluator.of(evaluator, net)
        for row, c in zip(rows, pool_):
            row["pruningnet"] = scorer.score(c)
        scorer.restore()
        evaluator.restore()
        save()

    batches = ShuffledBatches(torch.utils.data.Subset(bundle.train, bundle.fit.tolist()), config.batch_size)
    short = FinalistSettings(count=1, steps=steps, lr=lr, seed=seed)
    for i, (row, c) in enumerate(zip(rows, pool_)):
        if f"steps_{steps}_top1" not in row:
            row.update(trained_signals(setting, c, batches, short, (steps,), "steps")[0])
        if rungs and (f"rung_{rungs[-1]}_top1" not in row or "rung_truth" not in row):
            signals, module = trained_signals(setting, c, batches, short, tuple(rungs), "rung")
            row.update(signals)
            row["rung_truth"] = truth_of(setting, c, finetune_epochs, seed, module)
        if "truth" not in row:
            row["truth"] = truth_of(setting, c, finetune_epochs, seed)
        if "truth_other_seed" not in row:  # the noise ceiling: the same fine-tune, another seed
            row["truth_other_seed"] = truth_of(setting, c, finetune_epochs, seed + 1)
        for k in range(2, truth_seeds):
            if f"truth_seed_{k}" not in row:
                row[f"truth_seed_{k}"] = truth_of(setting, c, finetune_epochs, seed + k)
        save()
        say(f"candidate {i + 1:2d}/{len(pool_)}: FLOPs x{row['flops_ratio']:.3f}  truth {row['truth']:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("flops_ratio", "truth")))

    if reconstruct is None:
        reconstruct = meta["reconstruct"] = default_inputs(setting.inputs.example)
    recon_keys = truth_keys("recon_", max(2, recon_truth_seeds))
    if reconstruct > 0 and any(k not in r for r in rows for k in recon_keys):
        build = setting.at(budget).build(setting.prunable)  # as search.run builds a finalist: refit to the full model
        for i, (row, c) in enumerate(zip(rows, pool_)):
            missing = [k for k in recon_keys if k not in row]
            if not missing:
                continue
            module = evaluator.recalibrated(build(c))
            row["recon_top1"] = score_module(module, evaluator.held_out)
            row["recon_neg_tce"] = -held_out_loss(module, evaluator.held_out, calibrated=True)
            for key in missing:  # each fine-tune from its own copy of the refit weights, seeded by its key's seed
                row[key] = truth_of(setting, c, finetune_epochs, seed + recon_keys.index(key), copy.deepcopy(module))
            save()
            say(f"candidate {i + 1:2d}/{len(pool_)} refit: recon_top1 {row['recon_top1']:.4f}  recon_truth "
                f"{row['recon_truth']:.4f} (from the copied weights {row['truth']:.4f})")

    wanted = ["supernet_top1"] + (["supernet_truth"] if supernet_truth else [])
    if supernet_epochs > 0 and any(k not in r for r in rows for k in wanted):
        pipeline = setting.at(budget)
        base_state = {k: v.detach().clone() for k, v in setting.prunable.model.state_dict().items()}
        per_epoch = max(1, len(batches.dataset) // config.batch_size)
        settings = SupernetSettings.for_epochs(supernet_epochs, per_epoch, seed=seed)
        stats_ = train_supernet(setting.prunable, batches, settings=settings, calibration=setting.inputs.calibration,
                                sample=feasible_sampler(setting.prunable.space,
                                                        lambda x: pipeline.budget.feasible(setting.price(x))),
                                device=evaluator.device)
        say(f"supernet: {stats_.steps} sandwich steps in {stats_.seconds:.0f} s")
        trained = pipeline.evaluator(setting.prunable)  # the supernet's BatchNorm snapshot, as the pipeline does
        try:
            for i, (row, c) in enumerate(zip(rows, pool_)):
                row["supernet_top1"] = trained.score(c)
                trained.restore()
                if supernet_truth and "supernet_truth" not in row:
                    row["supernet_truth"] = truth_of(setting, c, finetune_epochs, seed,
                                                     trained.recalibrated(materialize(setting.prunable, c)))
                save()
        finally:
            setting.prunable.model.load_state_dict(base_state)
    save()
    return {**meta, "rows": rows, "seconds": time.perf_counter() - started}


def stored_results(rows_path: Path) -> list[dict]:
    """Every setting kept in `rows_path`, as `fidelity` returns it (nothing measured; `seconds` unknown)."""
    return [{**entry["meta"], "rows": list(entry["rows"].values()), "seconds": float("nan")}
            for entry in json.loads(rows_path.read_text()).values()]


def with_default_pick(rows: list[dict], steps: int) -> list[dict]:
    """`rows` with `default_pick`: minus the rank sum of steps_S_neg_ce and bn_top1 (ties by bn_top1), the
    default `--finalist-rank ce+proxy`."""
    ce, proxy = f"steps_{steps}_neg_ce", "bn_top1"
    if not rows or any(ce not in r or proxy not in r for r in rows):
        return rows
    rank = {name: stats.rankdata([-r[name] for r in rows], method="ordinal") for name in (ce, proxy)}
    rows = [r | {"default_pick": -(rank[ce][i] + rank[proxy][i]) + 1e-6 * r[proxy]} for i, r in enumerate(rows)]
    return [r | {f"{prefix}truth_mean": float(np.mean(truths(r, prefix))) for prefix in ("", "recon_")
                 if f"{prefix}truth_other_seed" in r} for r in rows]


def truth_keys(prefix: str, seeds: int) -> list[str]:
    """The keys of a row's first `seeds` truths, in seed order: {prefix}truth (seed), {prefix}truth_other_seed
    (seed + 1), {prefix}truth_seed_k (seed + k); prefix "" fine-tunes from the copied weights, "recon_" from the
    refit ones."""
    return [f"{prefix}truth", f"{prefix}truth_other_seed", *(f"{prefix}truth_seed_{k}" for k in range(2, seeds))][:seeds]


def truths(row: dict, prefix: str = "") -> list[float]:
    """The row's truths with `prefix` (see `truth_keys`) in seed order, as far as they go without a gap."""
    out, k = [], 0
    while True:
        key = truth_keys(prefix, k + 1)[-1]
        if key not in row:
            return out
        out.append(row[key])
        k += 1


def seed_count(rows: list[dict], prefix: str = "") -> int:
    """How many fine-tune seeds every row has a truth with `prefix` for."""
    return min(len(truths(r, prefix)) for r in rows) if rows else 0


def split_half(rows: list[dict], prefix: str = "") -> float:
    """Spearman of the mean truth over the even seeds against the mean over the odd ones (the noise ceiling of a
    mean of half the seeds; nan with fewer than 4)."""
    n = seed_count(rows, prefix)
    if n < 4:
        return float("nan")
    t = np.array([truths(r, prefix)[:n] for r in rows])
    return float(stats.spearmanr(t[:, 0::2].mean(1), t[:, 1::2].mean(1)).statistic)


def proxy_table(result: dict, truth_key: str = "truth", signals: list[str] | None = None) -> list[str]:
    rows = [r for r in with_default_pick(result["rows"], result["steps"]) if truth_key in r]
    truth = np.array([r[truth_key] for r in rows])
    best5 = set(np.argsort(-truth, kind="stable")[:5])
    skip = {"truth", "supernet_truth", "rung_truth", "truth_mean", "flops_ratio", "recon_truth", "recon_truth_mean"}
    if truth_key != "recon_truth":
        skip.add("recon_truth_other_seed")
    if truth_key == "truth_mean":
        skip.add("truth_other_seed")
    if signals is None:  # in the rows' order, a signal added later (bn_neg_tce) beside its kin
        signals = [k for k in rows[0] if k not in skip and "truth_seed_" not in k and k != "bn_neg_tce"]
        if "bn_neg_tce" in rows[0]:
            signals.insert(signals.index("bn_neg_ce") + 1 if "bn_neg_ce" in signals else 0, "bn_neg_tce")
    base_test = result['base_test'] if result['base_test'] is not None else float('nan')
    flops = np.array([r["flops_ratio"] for r in rows])
    last_rung = result["rungs"][-1] if result.get("rungs") else None
    what = {"truth": "the base weights", "rung_truth": f"the weights the last rung ({last_rung} steps) left",
            "supernet_truth": f"the supernet's weights ({result['supernet_epochs']} epochs)",
            "truth_mean": f"the base weights, the mean of {seed_count(rows)} fine-tune seeds",
            "recon_truth": f"the weights search.run builds (refit on {result.get('reconstruct')} training inputs, "
                           "`--reconstruct`)",
            "recon_truth_mean": f"the weights search.run builds, the mean of {seed_count(rows, 'recon_')} fine-tune "
                                "seeds"}[truth_key]
    lines = [f"{result['model']} on {result['data']} (base test {base_test:.4f}) at {result['budget']}: "
             f"{len(rows)} candidates (FLOPs x{flops.min():.3f}-x{flops.max():.3f}), truth = test top-1 after "
             f"{result['finetune_epochs']} fine-tuning epoch(s) from {what} (truth range {truth.min():.4f}-"
             f"{truth.max():.4f})",
             "", "| signal | Spearman | Kendall | top-5 overlap | truth of its pick |", "|---|---|---|---|---|"]
    for name in signals:
        values = np.array([r.get(name, np.nan) for r in rows])
        if not np.isfinite(values).all():
            continue
        rho = stats.spearmanr(values, truth).statistic
        tau = stats.kendalltau(values, truth).statistic
        top5 = set(np.argsort(-values, kind="stable")[:5])
        lines.append(f"| {name} | {rho:.3f} | {tau:.3f} | {len(top5 & best5)}/5 | "
                     f"{truth[int(np.argmax(values))]:.4f} |")
    return lines


def _rank_sum(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Indices ordered by the sum of their ranks in `first` and `second` (higher is better), ties by position."""
    place = lambda v: np.argsort(np.argsort(-v, kind="stable"), kind="stable")  # noqa: E731
    return np.lexsort((np.arange(len(first)), place(first) + place(second)))


def selection_table(result: dict, subsets: int = 2000, size: int = 20, finalists: int = 5, seed: int = 0,
                    truth_key: str = "truth") -> list[str]:
    """Picking by the proxy alone vs. by the finalists' rules, over random subsets of the candidates: the default
    (top `finalists` by the proxy, then ce after S steps + the proxy's rank) and, with rungs, successive halving
    (the top 16 by the proxy; the first rung ranked by ce + proxy, later ones by their own ce; the best third on)."""
    rows, steps, rungs = with_default_pick(result["rows"], result["steps"]), result["steps"], result.get("rungs", ())
    truth = np.array([r[truth_key] for r in rows])
    proxy = np.array([r["bn_top1"] for r in rows])
    ce = np.array([r[f"steps_{steps}_neg_ce"] for r in rows])
    rung_ce = [np.array([r[f"rung_{t}_neg_ce"] for r in rows]) for t in rungs]
    rng = np.random.default_rng(seed)
    ce_bn = np.array([r["bn_neg_ce"] for r in rows])
    tce_bn = np.array([r.get("bn_neg_tce", np.nan) for r in rows])
    tce_recon = np.array([r.get("recon_neg_tce", np.nan) for r in rows])
    rules = {"proxy alone (bn_top1)": None, "BN cross-entropy alone (bn_neg_ce)": "bn_ce",
             **{f"top {k} by bn_top1, then bn_neg_ce (`--finalists {k} --finalist-steps 0 --finalist-rank ce`)":
                k for k in (5, 10)},
             **({"top 10 by bn_top1, then bn_neg_tce (`--finalist-rank tce --reconstruct 0`)": "tce"}
                if np.isfinite(tce_bn).all() else {}),
             **({"top 10 by bn_top1, then recon_neg_tce (search.run's default: refit, then `--finalist-rank tce`)":
                 "recon"} if np.isfinite(tce_recon).all() else {}),
             f"former default finalists (top {finalists} by bn_top1, then ce after {steps} steps + proxy)": "default"}
    if rungs:
        rules[f"rungs (top 16 by bn_top1, rungs of {','.join(map(str, rungs))} steps, best third on)"] = "rungs"
    picks = {k: [] for k in rules}
    wins = dict.fromkeys(rules, 0)
    size = min(size, len(rows))
    for _ in range(subsets):
        subset = rng.choice(len(rows), size=size, replace=False)
        order = subset[np.lexsort((subset, -proxy[subset]))]         # by proxy, ties by index
        best = truth[subset].max()
        for key, rule in rules.items():
            if rule is None:
                pick = order[0]
            elif rule in ("tce", "recon"):
                top, signal = order[:10], tce_bn if rule == "tce" else tce_recon
                pick = top[np.lexsort((np.arange(len(top)), -signal[top]))][0]
            elif rule == "bn_ce":
                pick = subset[np.lexsort((subset, -ce_bn[subset]))][0]
            elif isinstance(rule, int):
                top = order[:rule]
                pick = top[np.lexsort((np.arange(len(top)), -ce_bn[top]))][0]
            elif rule == "default":
                top = order[:finalists]
                pick = top[_rank_sum(ce[top], proxy[top])[0]]
            else:
                alive = order[:16]
                for r, values in enumerate(rung_ce):
                    ranked = (alive[_rank_sum(values[alive], proxy[alive])] if r == 0
                              else alive[np.lexsort((np.arange(len(alive)), -values[alive]))])
                    alive = ranked[:max(1, -(-len(ranked) // 3))]
                pick = ranked[0]
            picks[key].append(truth[pick])
            wins[key] += truth[pick] >= best
    lines = [f"Selection over {subsets} random subsets of {size} candidates (a search's pool): "
             + ("the mean truth of the pick" if truth_key.endswith("truth_mean") else f"{truth_key} of the pick"),
             "", "| picked by | mean | median | picks the subset's best |", "|---|---|---|---|"]
    for key, values in picks.items():
        lines.append(f"| {key} | {np.mean(values):.4f} | {np.median(values):.4f} | {wins[key] / subsets:.0%} |")
    return lines


def render(result: dict, out: Path | None, command: str) -> list[str]:
    """The report: both tables (and the supernet-truth table when measured); written to `out` when given."""
    spent = (f"{result['seconds'] / 60:.0f} min for what this run measured" if np.isfinite(result["seconds"])
             else "re-rendered from its rows")
    pool = result["pool"] + (f" ({result['agent']}, {result['trials']} trials, distinct subnets between "
                             f"{result['low']} x and 1 x the budget, evenly spaced over the proxy's order)"
                             if result["pool"] == "search" else "")
    lines = ["# Proxy fidelity at the fair report's headline setting", "",
             f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}` "
             f"({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, one thread; {spent}). "
             f"See `benchmarks/fidelity.py` for every signal. Pool: {pool}.",
             "", *proxy_table(result), "", *selection_table(result), ""]
    if any("truth_other_seed" in r for r in result["rows"]):
        n = seed_count(result["rows"])
        lines += [f"Against the mean of {n} fine-tune seeds (less of the fine-tune's own noise):", "",
                  *proxy_table(result, "truth_mean"), ""]
        if n >= 4:
            lines += [f"The noise ceiling of a mean of {n // 2} seeds: the mean over the even seeds ranks the mean over "
                      f"the odd ones at Spearman {split_half(result['rows']):.3f}.", "",
                      *selection_table(result, truth_key="truth_mean"), ""]
    if any("rung_truth" in r for r in result["rows"]):
        lines += ["With the last rung's weights as the starting point (what the rungs export):", "",
                  *proxy_table(result, "rung_truth", ["bn_top1", "bn_neg_ce", "bn_neg_tce", *[f"rung_{t}_{m}" for t in
                                                                            result["rungs"] for m in ("top1", "neg_ce")]]),
                  ""]
    if any("recon_truth" in r for r in result["rows"]):
        lines += ["With the refit weights as the starting point (what search.run exports, `--reconstruct`):", "",
                  *proxy_table(result, "recon_truth", ["bn_top1", "bn_neg_tce", "recon_top1", "recon_neg_tce",
                                                       "recon_truth_other_seed"]), "",
                  *selection_table(result, truth_key="recon_truth"), ""]
        n = seed_count(result["rows"], "recon_")
        if n > 2:
            lines += [f"From the refit weights, against the mean of {n} fine-tune seeds:", "",
                      *proxy_table(result, "recon_truth_mean", ["bn_top1", "bn_neg_tce", "recon_top1",
                                                                "recon_neg_tce"]), ""]
            if n >= 4:
                lines += [f"The noise ceiling of a mean of {n // 2} seeds from the refit weights: the mean over the "
                          f"even seeds ranks the mean over the odd ones at Spearman "
                          f"{split_half(result['rows'], 'recon_'):.3f}.", ""]
            lines += [*selection_table(result, truth_key="recon_truth_mean"), ""]
    if any("supernet_truth" in r for r in result["rows"]):
        lines += ["With the supernet's weights as the starting point (what `--supernet-epochs` exports):", "",
                  *proxy_table(result, "supernet_truth", ["bn_top1", "supernet_top1"]), ""]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(out)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budget", default="0.1flops")
    parser.add_argument("--data", default=HARD_DIGITS)
    parser.add_argument("--baseline-epochs", type=int, default=10, help="epochs of the cached zoo baseline")
    parser.add_argument("--candidates", type=int, default=30)
    parser.add_argument("--pool", choices=("search", "uniform"), default="search")
    parser.add_argument("--agent", default="tpe", help="the search whose pool is measured (--pool search)")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--low", type=float, default=0.7, help="candidates' FLOPs from low x the budget")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50, help="the default finalists' steps")
    parser.add_argument("--rungs", default="20,80,320", help="successive halving's rungs ('' for none)")
    parser.add_argument("--supernet-epochs", type=float, default=2, help="0: no supernet proxy")
    parser.add_argument("--supernet-truth", action="store_true",
                        help="also fine-tune every candidate from the supernet's weights")
    parser.add_argument("--lr", type=float, default=SearchConfig.finalist_lr,
                        help="the short fine-tune's peak learning rate (default: search.run's --finalist-lr)")
    parser.add_argument("--pruningnet-epochs", type=int, default=0, help="> 0: the PruningNet proxy too")
    parser.add_argument("--truth-seeds", type=int, default=2,
                        help="fine-tune seeds of the truth (>= 2; the second is the noise ceiling)")
    parser.add_argument("--recon-truth-seeds", type=int, default=2,
                        help="fine-tune seeds of the truth from the refit weights (> 2: also ranked against their "
                             "mean; >= 4: with its split-half noise ceiling)")
    parser.add_argument("--reconstruct", type=int,
                        help="training inputs the refit signals use (search.run's --reconstruct, and its default); 0: none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=Path, default=ROWS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render-only", action="store_true", help="render --out from --rows, measure nothing")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 8 candidates, 30 trials, 10 steps, rungs 4,8, 0.25 supernet epochs, "
                             "on the bundled digits, rows and report in /tmp")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.trials, args.steps, args.rungs, args.supernet_epochs = 8, 30, 10, "4,8", 0.25
        args.data, args.baseline_epochs, args.budget = "digits", 3, "0.25flops"
        args.rows, args.out = Path("/tmp/fidelity_quick_rows.json"), Path("/tmp/fidelity_quick.md")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    command = "python benchmarks/fidelity.py " + " ".join(sys.argv[1:])
    if args.render_only:
        if not args.rows.is_file():
            raise SystemExit(f"{args.rows}: no rows to render; run without --render-only first")
        print("\n".join(render(stored_results(args.rows)[-1], args.out, command.strip())), flush=True)
        return
    result = fidelity(args.model, args.budget, args.candidates, args.finetune_epochs, args.steps,
                      args.pruningnet_epochs, args.seed, args.lr, data=args.data, baseline_epochs=args.baseline_epochs,
                      rungs=tuple(int(t) for t in args.rungs.split(",") if t), supernet_epochs=args.supernet_epochs,
                      supernet_truth=args.supernet_truth, pool=args.pool, agent=args.agent, trials=args.trials,
                      low=args.low, truth_seeds=args.truth_seeds, rows_path=args.rows, reconstruct=args.reconstruct,
                      recon_truth_seeds=args.recon_truth_seeds)
    print("\n".join(render(result, args.out, command.strip())), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
