"""Standalone evaluation of flow models on prompt sets with several rewards (``leapalign eval``).

Modules: :mod:`~leapalign.eval.prompts` (prompt files), :mod:`~leapalign.eval.runner` (resumable generation and
scoring), :mod:`~leapalign.eval.stats` (means, intervals, win rates), :mod:`~leapalign.eval.report` (eval.json,
CSV, grids, Markdown, comparisons), :mod:`~leapalign.eval.models` (which weights) and
:mod:`~leapalign.eval.command` (the command line). The training-time evaluation stays in
:mod:`leapalign.evaluation`.

Example:
    >>> from leapalign.eval import SamplingSettings, load_prompt_set, run_evaluation, summarize_run
    >>> run = run_evaluation(model, load_prompt_set("prompts.txt"), [reward], SamplingSettings(), Path("out"), {})
    >>> summarize_run(run)["hpsv2.mean"]
"""

from leapalign.eval.prompts import PromptSet, load_prompt_set
from leapalign.eval.report import compare_runs, summarize_run, write_comparison, write_outputs
from leapalign.eval.runner import EvalRun, SamplingSettings, image_seed, run_evaluation

__all__ = [
    "EvalRun",
    "PromptSet",
    "SamplingSettings",
    "compare_runs",
    "image_seed",
    "load_prompt_set",
    "run_evaluation",
    "summarize_run",
    "write_comparison",
    "write_outputs",
]
