"""Benchmarks of issue 4: method comparison, ablations, cost table, gradient fidelity and the report."""
