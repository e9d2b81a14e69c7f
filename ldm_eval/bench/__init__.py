"""Benchmarks: speed and memory measured side by side, printed as ratios (training, the recipe's
settings, Inception feature extraction, the demo's start-up).

May import: ``ldm_eval.metrics``, ``pipelines``.
"""
