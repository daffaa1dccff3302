"""Reward research on ShapesWorld (``leapalign.worlds.shapes``): the tools behind the findings in
``docs/shapesworld.md``, kept out of the installed package.

- :mod:`~research.shapesworld.score_variants`: research forms of ShapesScore (averaged over perturbed views,
  contrastive against near-miss prompts, an image tower on a frozen segmenter), usable as dotted-path rewards;
- :mod:`~research.shapesworld.contrast`: the near-miss prompts of the contrastive form;
- :mod:`~research.shapesworld.score_research`: ShapesScore training with the research options (fine-tuning given
  weights, adversarial training, preference pairs, a segmenter backbone, category weights);
- :mod:`~research.shapesworld.segmenter` and :mod:`~research.shapesworld.annotator`: a learned scene segmenter
  and the annotator built on it; :mod:`~research.shapesworld.preferences`: generated images it judges;
- :mod:`~research.shapesworld.score_audit`: how well a reward agrees with ShapesEval on generated images;
- :mod:`~research.shapesworld.evaluator_figures`: the accuracy figures of ShapesEval.

Results they wrote are in ``research/shapesworld/results/``. Run the modules from the repository root
(``python -m research.shapesworld.<module> ...``); their tests: ``python -m pytest research/tests``.
"""
