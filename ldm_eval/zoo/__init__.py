"""The zoo: building the demo's shipped models (``build``) and exporting them with model cards (``export``).

May import: ``ldm_eval.presets``, ``ldm_eval.sweeps``, ``ldm_eval.metrics``, ``ldm_eval.reporting``, ``pipelines``.
"""
