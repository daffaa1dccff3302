"""Research code that ships with the repository but not with the ``leapalign`` package (pyproject installs
``leapalign*`` only). Run its modules from the repository root, e.g. ``python -m research.shapesworld.score_audit``."""
