"""Sweeps: runs that train and measure a set of models, one cell per model, resumable.

The settings every sweep shares (``settings``), the run folder and its shared measurements
(``run_folder``), where cells run (``executor``: here, in worker processes, or on Ray), and the
sweep kinds: compression (``compression``), conditioning (``conditioning``), the first-stage
study (``first_stage``) and ``evaluate`` for any model folder.

May import: ``ldm_eval.metrics``, ``ldm_eval.reporting``, ``pipelines``.
"""
