"""`python -m search.run`: search a pruned architecture of a model under a budget, and export the best.

    python -m search.run --agent random --budget 0.4flops
    python -m search.run --model torchvision:resnet18 --weights r18.pt --data imagefolder:/data/imgs \\
        --agent random --budget 0.5flops --budget 0.6params --trials 300

With no model and data it runs on the embedded default: a CIFAR-style ResNet-20 on scikit-learn's
bundled handwritten digits (trained once, then cached).
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m search.run: this module again under its name, a Ctrl-C in its imports one line
    from search.cli import command_main

    raise SystemExit(command_main("search.run"))

import argparse
import dataclasses

from agents.registry import list_agents

from search.engine.budget import GRAMMAR
from search.cli import ArgumentParser, configure_logging, given_options, guarded
from search.engine.config import (BLOCK_ENCODINGS, DEFAULT_AGENT, EXPORT_WEIGHTS, FINALIST_RANKINGS, SCORERS,
                                  SearchConfig, parse_steps)
from search.engine.loop import Outcome
from search.engine.pipeline import Pipeline, PruneResult
from search.engine.versions import VersionAction

RUNTIME = ("resume", "no_progress", "quiet", "explain")  # how this process runs, not what the run is


def config_defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    """Every option's default, read from `SearchConfig` (written there once, with the reason for it). `--agent`
    and `--budget` stay unset, so that a resumed run can tell what was given from what was not."""
    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    return {a.dest: fields[a.dest].default for a in parser._actions
            if a.dest in fields and a.dest not in ("agent", "budget") and fields[a.dest].default is not dataclasses.MISSING}


def steps_or_rungs(text: str) -> int | list[int]:
    """`--finalist-steps`: one number of steps (50), or rising ones separated by commas (rungs: 20,80,320)."""
    try:
        return parse_steps(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected steps such as 50 or rungs such as 20,80,320, got {text!r}") from None


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action=VersionAction,
                   help="print the versions of prunesearch, torch, optuna, ray and timm, and exit")
    what = p.add_argument_group("what to search")
    what.add_argument("--agent", help=f"search agent: {', '.join(list_agents())} (default: {DEFAULT_AGENT}, the fair "
                                       "report's winner)")
    what.add_argument("--budget", action="append", default=None, metavar="LIMIT",
                      help=f"repeatable; every limit must hold. {GRAMMAR}")
    what.add_argument("--model",
                      help="resnet20 | resnet56 | mobilenetv2 | torchvision:NAME | timm:NAME[?key=value&...] | package.module:factory | "
                           "PATH.pt (a whole pickled model, with --trust-pickle)")
    what.add_argument("--weights", help="state dict or checkpoint ({'state_dict': ...}, {'model': ...}), "
                                                      "loaded with weights_only=True (tensors only, no code runs)")
    what.add_argument("--trust-pickle", action="store_true",
                      help="allow --model PATH.pt, a whole pickled module: unpickling runs code from the file")
    what.add_argument("--data",
                      help="digits | cifar10:DIR | imagefolder:DIR[@SIZE] | package.module:factory")
    search = p.add_argument_group("search")
    search.add_argument("--trials", type=int, help="candidates to try")
    search.add_argument("--seed", type=int, help="seeds the data split, the baseline and the agent")
    search.add_argument("--width-ratios",
                        help="allowed width ratios of every channel group, comma-separated")
    search.add_argument("--round-to", type=int, help="round every width to a multiple of this")
    search.add_argument("--no-block-removal", action="store_true", help="never remove residual blocks")
    search.add_argument("--block-encoding", choices=BLOCK_ENCODINGS,
                        help="flags: one keep flag per removable residual block; depth: one depth per stage (a run "
                             "of consecutive removable blocks keeps its first d), as MetaPruning/AutoSlim/OFA")
    search.add_argument("--no-warm-start", action="store_true",
                        help="do not propose global magnitude pruning's candidate at the budget among the first "
                             "(abc, evolution, metapruning, random, tpe, nsga2 use it; uniform and amc never do)")
    scoring = p.add_argument_group("scoring (BN-recalibrated held-out top-1)")
    scoring.add_argument("--scorer", choices=SCORERS,
                         help="whose weights score a candidate: base (the model's own) or pruningnet (MetaPruning's "
                              "generated weights; the default of --agent metapruning, which is evolution + pruningnet)")
    scoring.add_argument("--calib-batches", type=int, help="batches to recalibrate BatchNorm on")
    scoring.add_argument("--batch-size", type=int, help="calibration (and training) batch size")
    scoring.add_argument("--eval-samples", type=int, help="held-out samples scored per candidate")
    scoring.add_argument("--no-racing", action="store_true",
                         help="score every candidate on every held-out sample (racing stops one early once it "
                              "cannot enter the best --racing-top-k; off anyway with a user score function)")
    scoring.add_argument("--racing-top-k", type=int, help="racing keeps every candidate that may enter "
                         "the k best scores so far")
    scoring.add_argument("--racing-confidence", type=float,
                         help="racing's confidence, per candidate, that it stops none that would enter the top k")
    scoring.add_argument("--racing-chunk", type=int, help="held-out samples per racing step")
    scoring.add_argument("--held-out", type=float,
                         help="share (or count, if >= 1) of the training set held out for scoring")
    scoring.add_argument("--device", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    scoring.add_argument("--latency", action="store_true",
                         help="measure a latency table and report latency even without a latency budget")
    scoring.add_argument("--latency-batch", type=int, help="batch size latency is measured at")
    scoring.add_argument("--latency-backend", metavar="{torch,onnxruntime,openvino}",
                         help="the runtime latency is timed on (the table and the final check): torch (eager), "
                              "onnxruntime or openvino (the model exported to ONNX, with the runtime's fusions)")
    scoring.add_argument("--baseline-epochs", type=int,
                         help="epochs to train a zoo model given without --weights (cached)")
    search.add_argument("--supernet-epochs", type=float,
                        help="train the shared weights as a supernet for N epochs before the search (each step: the "
                             "full width on labels, the smallest and 2 random candidates within the budget distilled "
                             "from it); candidates are scored, and the export inherits, those weights. 0: off")
    final = p.add_argument_group("after the search: filling the budget, finalists (picking by a short fine-tune)")
    final.add_argument("--fill", action="store_true",
                       help="widen the best candidates (narrowest group first) until the budget binds; the widened "
                            "ones are scored as extra trials and compete with the rest")
    final.add_argument("--finalists", type=int,
                       help="the best K distinct candidates are fine-tuned briefly, scored again on held-out, and the "
                            "best exported; 0: export the proxy's best as it is")
    final.add_argument("--finalist-steps", type=steps_or_rungs, metavar="STEPS[,STEPS...]",
                       help="SGD steps per finalist on the fit split (0: only scored again with the exported weights); "
                            "rising steps such as 20,80,320 make rungs: all finalists train to the first, the best "
                            "third of each rung trains on to the next (successive halving)")
    final.add_argument("--no-one-shot", action="store_true",
                       help="do not score global magnitude and uniform pruning at the budget and add them to the "
                            "finalists (by default they always compete there)")
    final.add_argument("--reconstruct", type=int, metavar="N",
                       help="before untrained finalists are scored and ranked, refit their layers by least squares so that "
                            "each layer's output matches the full model's on N training inputs (no labels, no SGD "
                            "step; default 1024, fewer for large inputs: at most 2^20 pixels in all, at least 32); "
                            "the export is that refit copy (--export-weights base keeps the copied weights); 0: off")
    final.add_argument("--finalist-lr", type=float, help="finalists' peak learning rate (cosine to 0)")
    final.add_argument("--finalist-rank", choices=FINALIST_RANKINGS,
                       help="how finalists are ordered after their steps: held-out cross-entropy at the temperature "
                            "that minimizes it (tce, the default), at the logits' own scale (ce), or the score; alone "
                            "or plus the proxy's rank (+proxy; ties keep the proxy's order)")
    ray = p.add_argument_group("distribution (Ray)")
    ray.add_argument("--workers", type=int,
                     help="score on N Ray actors (a local Ray is started unless --ray-address); 0: in this process")
    ray.add_argument("--ray-address", help="join an existing Ray cluster: auto, or HOST:PORT")
    ray.add_argument("--cpus-per-worker", type=float, help="CPUs per actor (its torch threads)")
    ray.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (fractions allowed)")
    ray.add_argument("--backend", choices=("actors", "tune"),
                     help="actors: this engine's own pool (lowest overhead); tune: Ray Tune's Tuner (its experiment "
                          "management, FailureConfig retries, Tuner.restore on --resume)")
    agent = p.add_argument_group("agent options (each applies to the agents named)")
    agent.add_argument("--food-sources", type=int,
                       help="abc: food sources (candidates kept), default 10 (below 200 trials: trials // 20, "
                            "at least 4)")
    agent.add_argument("--limit", type=int, help="abc: failed moves before a source is abandoned, default 5")
    agent.add_argument("--genes", type=int, help="abc: genes moved per bee, default 2")
    agent.add_argument("--startup-trials", type=int, help="tpe: random trials before TPE models, default trials/5")
    agent.add_argument("--history", type=int, help="tpe: the recent trials its model is fitted on (plus the 50 best "
                                                   "and the outstanding ones), default 100; 0: every trial")
    agent.add_argument("--ei-candidates", type=int, help="tpe: candidates drawn per ask to maximize the expected "
                                                        "improvement, default 24")
    agent.add_argument("--updates", type=int, help="amc: gradient updates per episode, default 2")
    agent.add_argument("--population", type=int, help="nsga2: population size, default 20; evolution, metapruning: "
                                                      "default 50, or trials/4 (at least 8) below 200 trials; a "
                                                      "value given is kept")
    agent.add_argument("--parents", type=int, help="evolution, metapruning: top-k parents, default 10")
    agent.add_argument("--storage", help="tpe, nsga2: Optuna storage (sqlite:///study.db, or FILE.log for a "
                                         "journal file) to resume or share a study")
    agent.add_argument("--study-name", help="tpe, nsga2: study name within --storage")
    meta = p.add_argument_group("MetaPruning (--agent metapruning)")
    meta.add_argument("--pruningnet", metavar="PATH", help="a trained PruningNet (pruningnet.pt of an earlier run) "
                                                          "instead of training one")
    meta.add_argument("--pruningnet-epochs", type=int, help="epochs to train the PruningNet")
    meta.add_argument("--export-weights", choices=EXPORT_WEIGHTS,
                      help="weights of the exported subnet: refit to the full model's outputs by --reconstruct "
                           "(refit, the default while --reconstruct is on), copied from the base model as they are "
                           "(base), or generated by the PruningNet (pruningnet, --agent metapruning); the refit copy "
                           "starts a short fine-tune better, the copied weights a long one (python -m search.finetune "
                           "--start auto, its default, starts a refit export's long fine-tune from them; "
                           "docs/benchmarks.md)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="run directory (default runs/<time>-<model>-<agent>-<budget>)")
    out.add_argument("--resume", default=None, metavar="DIR", help="continue an interrupted run")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("--quiet", action="store_true", help="warnings and the summary only")
    out.add_argument("--explain", action="store_true",
                     help="print the search space derived from the model (groups, frozen groups and why) and stop")
    p.set_defaults(**config_defaults(p))
    return p


def config_of(args: argparse.Namespace) -> SearchConfig:
    """The run's configuration; an option left unset (`--agent`) takes `SearchConfig`'s default."""
    return SearchConfig.from_json({k: v for k, v in vars(args).items() if k not in RUNTIME and v is not None})


def run(args: argparse.Namespace, given: dict | None = None) -> Outcome:
    """The search for parsed `args` (`given`: the options present on the command line, for --resume)."""
    return _run(args, given).outcome


def _run(args: argparse.Namespace, given: dict | None = None) -> PruneResult:
    progress = not args.no_progress
    if args.resume:
        changes = {k: v for k, v in (given if given is not None else vars(args)).items() if k not in RUNTIME}
        pipeline = Pipeline.resume(args.resume, changes, progress=progress)
    else:
        if args.explain:  # the space alone: no budget is needed to print it
            args = argparse.Namespace(**{**vars(args), "budget": args.budget or ["1flops"]})
        pipeline = Pipeline(config_of(args), progress=progress)
    if args.explain:
        print(pipeline.explain())
        return PruneResult(None, None, None, None, {})
    try:
        result = pipeline.run()
    finally:
        if pipeline.run_dir is not None:
            pipeline.run_dir.unlock()
    print(result.summary)
    return result


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging(args.quiet)
    given = given_options(get_args_parser, argv) if args.resume else None
    return guarded(lambda: 130 if _run(args, given).interrupted else 0)
