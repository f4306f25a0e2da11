"""The end of a run: the finalists and the latency check pick what is exported; the export, best.json, the
trials table and plot, run.json's status and the printed summary are written here."""
from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evaluators.accuracy import AccuracyEvaluator
from spaces.space import Candidate

from search.engine.loop import Outcome
from search.engine.records import BEST_FILE, BEST_MODEL_FILE, BEST_STATE_FILE, FINETUNE_CSV, RUN_FILE, PruneResult
from search.errors import UserError, first_line
from search.finetune.loop import CHECKPOINT_FILE, FINETUNE_PLOT, RAY_DIR
from search.finetune.step import evaluate
from search.selection.finalists import FINALISTS_FILE, finalists_frame, pick_finalists, score_module
from search.selection.latency_check import check_ranked, measure_sample, ranked_trials, summary_lines
from search.selection.one_shot import origin

if TYPE_CHECKING:
    from search.engine.pipeline import Pipeline

log = logging.getLogger(__name__)


def finish(pipeline: Pipeline, prunable, outcome: Outcome, evaluator: AccuracyEvaluator, base, base_score, seconds,
           table=None, pruningnet=None) -> PruneResult:
    """Pick what is exported (finalists, then the latency check), export it and write the records."""
    c, run_dir, inputs = pipeline.config, pipeline.run_dir, pipeline.inputs
    # a Ctrl-C in the search asked to stop: no finalists, no predictor sample (--resume runs them); the latency
    # check still runs, as what is exported must meet the budget
    measured = measure_sample(pipeline, prunable, outcome, table) if table is not None and not outcome.interrupted \
        else {}
    finalists: list = []
    if outcome.best is not None and not outcome.interrupted:
        try:
            finalists = pick_finalists(pipeline, prunable, outcome.trials, evaluator, pruningnet)
        except KeyboardInterrupt:  # Ctrl-C in the finalists: the search's best is exported, --resume picks again
            outcome.interrupted = True
            log.warning("interrupted during the finalists: exporting the search's best (--resume runs them again)")
    best, check = (finalists[0].trial if finalists else outcome.best), None
    if table is not None and best is not None:
        # the finalists in their order, then every other scored trial by score: the first that fits is exported
        first = [f.trial for f in finalists]
        ranked = first + [t for t in ranked_trials(outcome.trials) if all(t is not f for f in first)]
        check = check_ranked(pipeline, prunable, ranked, table)
        measured.update({m.trial: m.ms.median for m in check.measurements})
        best = check.chosen
    frame = run_dir.write_trials(outcome.trials, base, measured)
    chosen_frame = finalists_frame(finalists, base, best, pipeline.one_shot) if finalists else None
    if chosen_frame is not None:
        run_dir.write_table(FINALISTS_FILE, chosen_frame)
    else:  # a resumed run that skips the stage leaves no finalists.csv of an earlier pass behind
        run_dir.remove(FINALISTS_FILE)
    if check is not None:
        run_dir.update_run(latency_check=check.to_json())
        if check.chosen is None:
            run_dir.update_run(status="over the latency budget", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
            raise UserError(check.failure(run_dir.path))
    exported = next((f for f in finalists if f.trial is best), None)
    record: dict[str, Any] = {}
    subnet = None
    if best is not None:
        if exported is not None:  # recalibrated and scored already (unless ranked on a refit copy)
            subnet, exported_score = pipeline.exported(prunable, exported, evaluator, pruningnet)
            if subnet is not exported.module and not evaluator.metric:
                log.info("exported with the copied weights (held-out top-1 %.4f; refit, it scored %.4f: "
                         "--export-weights refit exports that, the better model to use without a fine-tune)",
                         exported_score, exported.score)
        else:
            subnet = evaluator.recalibrated(pipeline.build(prunable, pruningnet)(best.candidate))
            exported_score = score_module(subnet, evaluator.held_out, evaluator.metric)
        for f in finalists:
            if f is not exported:
                f.module = None
        subnet.eval()
        test_top1 = evaluate(subnet, inputs.test, pipeline.device) if inputs.test is not None else None
        state = {k: v.detach().cpu() for k, v in subnet.state_dict().items()}
        retire_earlier_export(run_dir, state)
        run_dir.save_model(BEST_STATE_FILE, state)
        try:
            run_dir.save_model(BEST_MODEL_FILE, subnet.cpu())
        except Exception as error:  # noqa: BLE001 - the pickle is a convenience; best.json + state dict suffice
            log.warning("best.pt not written (the subnet does not pickle: %s); rebuild it from best.json and "
                        "%s", first_line(error), BEST_STATE_FILE)
        subnet.to(pipeline.device)
        steps = exported.steps if exported is not None else 0
        record = {
            "model": c.model, "weights": c.weights, "data": c.data, "seed": c.seed,
            "derive": {**c.derive_options(), "importance": "l2"},
            "input_shape": list(inputs.example.shape[1:]),
            "trial": best.number, "candidate": best.candidate.to_dict(),
            "held_out_top1": exported_score, "search_score": best.result.score,
            "selected_by": _selected_by(finalists, exported, c.finalist_rungs, pipeline.ranks_refit(prunable)) +
                           (", then the latency check" if check is not None else ""),
            "origin": origin(best, pipeline.one_shot),  # where the candidate came from: the search, a fill, one-shot
            # where the exported weights come from: the base model's, the PruningNet's, or the supernet's (the
            # base model's after --supernet-epochs of sandwich training)
            "export_weights": ("supernet" if c.exported_weights == "base" else "supernet, refit")
                              if c.supernet_epochs and c.exported_weights != "pruningnet" else c.exported_weights,
            "supernet_epochs": int(c.supernet_epochs) if float(c.supernet_epochs).is_integer() else c.supernet_epochs,
            "finetuned_steps": steps,
            # the layer-wise least-squares refit (--reconstruct) of the finalists that ranked, and of the export
            # with --export-weights refit; None: not used
            "reconstruction": _reconstruction(pipeline, prunable, best.candidate, exported),
            "test_top1": test_top1, "costs": dict(best.result.costs),
            "ratios": {k: best.result.costs[k] / base[k] for k in base},
            "summary": prunable.describe(best.candidate), "state_dict": BEST_STATE_FILE,
        }
        if check is not None:
            m = check.measurement
            record["latency"] = {**m.to_json(), "backend": check.backend, "batch": c.latency_batch,
                                 "budget": check.budget, "skipped": [s.to_json() for s in check.skipped]}
        run_dir.write(BEST_FILE, record)
    run_dir.write_pareto(frame)
    run_dir.plot(frame, caps=pipeline.budget.caps, base=base, best=best,
                 title=f"{inputs.name} / {c.data if inputs.data is not None else 'user data'}: {c.agent}, "
                       f"budget {pipeline.budget}")
    counts = frame.state.value_counts().to_dict()
    run_dir.update_run(status="interrupted" if outcome.interrupted else "complete",
                       finished=time.strftime("%Y-%m-%d %H:%M:%S"), search_seconds=round(seconds, 2),
                       trials=len(outcome.trials), states=counts, best=record and {
                           k: record[k] for k in ("trial", "held_out_top1", "search_score", "test_top1",
                                                  "ratios")})
    summary = summary_text(pipeline, outcome, frame, base, base_score, record, measured, counts, seconds, best, check)
    return PruneResult(subnet, best, frame, run_dir.path, {**base, "held_out": base_score,
                                                          "test": inputs.base_test},
                       outcome.interrupted, summary, record, chosen_frame)


def retire_earlier_export(run_dir, state: dict) -> list[str]:
    """A resumed run that exports another subnet (or other weights) than its earlier pass removes what was made
    from that one: the fine-tune's outputs (`finetuned.*`, its table, plot, checkpoints and run.json entry) and
    `search.export`'s files of the old subnet (`best.onnx`, ...), which would no longer load or would describe
    another model. The same export keeps them. Returns the names removed."""
    old = run_dir.path / BEST_STATE_FILE
    if not old.is_file():
        return []
    try:
        previous = torch.load(old, map_location="cpu", weights_only=True)
        same = previous.keys() == state.keys() and all(torch.equal(previous[k], v) for k, v in state.items())
    except Exception:  # noqa: BLE001 - an unreadable earlier export is not the same one
        same = False
    if same:
        return []
    kept = {BEST_FILE, BEST_MODEL_FILE, BEST_STATE_FILE}
    stale = [p for p in run_dir.path.iterdir()
             if p.name.startswith(("finetuned.", "best.")) and p.name not in kept
             or p.name in (FINETUNE_CSV, FINETUNE_PLOT, CHECKPOINT_FILE, RAY_DIR)]
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else run_dir.remove(path.name)
    record = run_dir.read()
    if record.pop("finetune", None) is not None:
        run_dir.write(RUN_FILE, record)
    if stale:
        log.warning("the export changed since the earlier pass: removed what was made from the old one (%s)",
                    ", ".join(sorted(p.name for p in stale)))
    return [p.name for p in stale]


def summary_text(pipeline: Pipeline, outcome, frame, base, base_score, record, measured, counts, seconds, best=None,
             check=None) -> str:
    metric = "score" if pipeline.inputs.score else "held-out"
    test = pipeline.inputs.base_test
    lines = [f"base : {base['flops'] / 1e6:9.3f} MFLOPs  {base['params'] / 1e6:7.4f} M params  "
             f"{metric} {base_score:.4f}" + (f"  test {test:.4f}" if test is not None else "")]
    if record:
        r = record["ratios"]
        tested = f"  test {record['test_top1']:.4f}" if record["test_top1"] is not None else ""
        steps = record["finetuned_steps"]
        how = (f"after {steps} fine-tuning steps; search score {best.result.score:.4f}, picked by "
               f"{record['selected_by']}" if steps else "before fine-tuning" +
               (f"; search score {best.result.score:.4f}" if record["selected_by"] != "search score" or
                abs(record["held_out_top1"] - best.result.score) > 1e-9 else "") +
               (f", picked by {record['selected_by']}" if record["selected_by"] != "search score" else ""))
        lines.append(f"best : {best.result.costs['flops'] / 1e6:9.3f} MFLOPs  {best.result.costs['params'] / 1e6:7.4f}"
                     f" M params  {metric} {record['held_out_top1']:.4f}{tested}  (FLOPs x{r['flops']:.3f}, params "
                     f"x{r['params']:.3f}, trial {best.number}, {how})")
    else:
        lines.append("best : none scored")
    lines.append(f"trials: {len(outcome.trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())}) in "
                 f"{seconds:.1f} s{' - interrupted' if outcome.interrupted else ''}"
                 f"{' - the agent had nothing more to propose' if outcome.finished_early else ''}")
    if check is not None:
        lines += summary_lines(check, pipeline.config.latency_batch)
    if measured:
        errors = [abs(frame.set_index("trial").latency_ms[n] - ms) / ms for n, ms in measured.items()]
        lines.append(f"         predictor error over {len(errors)} trials measured directly: median "
                     f"{100 * float(np.median(errors)):.1f}%, worst {100 * max(errors):.1f}%")
    lines.append(f"run  : {pipeline.run_dir.path}")
    if record and pipeline.inputs.data is not None:
        lines.append(f"next : python -m search.finetune {pipeline.run_dir.path}")
    return "\n".join(lines)


def _reconstruction(pipeline: Pipeline, prunable, candidate, exported=None) -> dict | None:
    """best.json's `reconstruction`: the inputs, whether the finalists were ranked on refit copies and whether the
    export is refit, the export's candidate's refit (layers refit and left, the output's distance to the full
    model's before and after); None when nothing was refit."""
    report = pipeline.reconstructions.get(Candidate(candidate))
    if report is None:
        return None
    ranked_refit = pipeline.ranks_refit(prunable)
    return {"inputs": sum(len(x) for x in pipeline.reconstructor_inputs),
            "finalists_ranked_refit": ranked_refit,
            # the refit copy's held-out score (what --export-weights refit exports), when the finalists scored it
            "refit_held_out_top1": exported.score if exported is not None and ranked_refit else None,
            "export_refit": pipeline.config.exported_weights == "refit", "layers": len(report.layers),
            "skipped": report.skipped, "output_error_before": report.error_before,
            "output_error_after": report.error_after, "kept": report.kept}


def _selected_by(finalists: list, exported, rungs: tuple[int, ...], refit: bool = False) -> str:
    """Which stage picked the export, in words (best.json's `selected_by`)."""
    if exported is None:
        return "search score"
    if len(rungs) > 1 and exported.steps:
        return (f"finalists ({len(finalists)}, successive halving over rungs of {', '.join(map(str, rungs))} steps; "
                f"rung {exported.rung + 1} picked it)")
    if not exported.steps:
        return f"finalists ({len(finalists)}, untrained, {'refit and ' if refit else ''}re-ranked on held-out)"
    return f"finalists ({len(finalists)}, {exported.steps} steps each)"
