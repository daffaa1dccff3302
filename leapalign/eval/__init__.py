"""Evaluation of flow models on prompt sets with rewards and evaluators: one path for the trainer (before, every
N steps, after) and for ``leapalign eval``.

Modules: :mod:`~leapalign.eval.config` (``evaluation.*`` keys), :mod:`~leapalign.eval.evaluators` (the
:class:`Evaluator` protocol and its registry), :mod:`~leapalign.eval.runner` (resumable generation, scoring and
judging), :mod:`~leapalign.eval.stats` (means, Student-t intervals, win rates), :mod:`~leapalign.eval.report`
(eval.json, CSV, captioned grids, Markdown, comparisons), :mod:`~leapalign.eval.store` (the evaluation folder),
:mod:`~leapalign.eval.training` (evaluation during training). The ``leapalign eval`` command is
:mod:`leapalign.cli.eval`.

Example:
    >>> from leapalign.data import load_prompt_set
    >>> from leapalign.eval import SamplingSettings, run_evaluation, summarize_run
    >>> run = run_evaluation(model, load_prompt_set("prompts.txt"), [reward], SamplingSettings(), [], Path("out"), {})
    >>> summarize_run(run)["hpsv2.mean"]
"""

from leapalign.eval.config import EvalConfig, EvaluatorConfig
from leapalign.eval.evaluators import EVALUATORS, Evaluator, build_evaluator
from leapalign.eval.report import compare_runs, comparison_table, summarize_run, write_comparison, write_outputs
from leapalign.eval.runner import EvalRun, SamplingSettings, image_seed, run_evaluation

__all__ = [
    "EVALUATORS",
    "EvalConfig",
    "EvalRun",
    "Evaluator",
    "EvaluatorConfig",
    "SamplingSettings",
    "build_evaluator",
    "compare_runs",
    "comparison_table",
    "image_seed",
    "run_evaluation",
    "summarize_run",
    "write_comparison",
    "write_outputs",
]
