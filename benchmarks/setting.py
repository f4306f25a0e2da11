"""A benchmark's setting: one model and data set up by the pipeline's stages, shared by every method compared.

    setting = Setting.of(SearchConfig(agent="random", budget=["0.4flops"], no_warm_start=True), progress=False)
    agent = setting.at("0.25flops").agent(setting.prunable, setting.price, name="abc", seed=1, trials=150)
    Engine(agent, setting.price, setting.budget("0.25flops"), setting.evaluator, trials=150).run()

The base model (the cached baseline of a zoo model), the prunable model, the cost model and the scorer
are built once, exactly as `search.run` builds them (`search.engine.pipeline.Pipeline`); a benchmark that
compares budgets gets one pipeline per budget (`at`), sharing them, so its agents are the pipeline's
own (warm start included unless the configuration turns it off).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from evaluators.accuracy import AccuracyEvaluator
from evaluators.cost import CostModel
from search.engine.config import SearchConfig
from search.engine.loop import Price, memoized
from search.engine.pipeline import Pipeline
from search.models.inputs import Inputs
from spaces.budget import Budget
from spaces.derive import PrunableModel


@dataclass
class Setting:
    """The pipeline's stages for one configuration: inputs, prunable model, cost model, scorer, prices."""

    pipeline: Pipeline
    inputs: Inputs
    prunable: PrunableModel
    cost: CostModel
    evaluator: AccuracyEvaluator
    price: Price
    _budgets: dict[str, Pipeline] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, config: SearchConfig, *, inputs: Inputs | None = None, progress: bool = False) -> Setting:
        pipeline = Pipeline(config, inputs=inputs, progress=progress)
        inputs = pipeline.load_inputs()
        prunable = pipeline.derive()
        cost, pipeline.budget = pipeline.cost_model(prunable)
        setting = cls(pipeline, inputs, prunable, cost, pipeline.evaluator(prunable),
                      memoized(lambda c: cost.price(c).as_dict()))
        if len(config.budget) == 1:
            setting._budgets[config.budget[0]] = pipeline
        return setting

    @property
    def base(self) -> dict[str, float]:
        return self.cost.base.as_dict()

    def at(self, budget: str) -> Pipeline:
        """The pipeline of this setting under `budget` (same inputs and prunable model), its budget resolved."""
        if budget not in self._budgets:
            pipeline = Pipeline(replace(self.pipeline.config, budget=[budget]), inputs=self.inputs,
                                progress=self.pipeline.progress)
            _, pipeline.budget = pipeline.cost_model(self.prunable)
            self._budgets[budget] = pipeline
        return self._budgets[budget]

    def budget(self, budget: str) -> Budget:
        """`budget` (one limit, e.g. "0.4flops") resolved against the base model."""
        return self.at(budget).budget
