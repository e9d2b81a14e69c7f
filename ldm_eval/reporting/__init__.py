"""Reporting: a run folder's ``results.jsonl`` rendered as tables, plots, ``report.md`` and ``report.html``.

What every report shares (``page``), the tables (``tables``), one module per report kind
(``compression``, ``conditioning``, ``first_stage``, ``evaluation``) and the dispatch that renders
whatever a folder holds (``dispatch``). Nothing here measures; everything re-renders from the log.

May import: ``pipelines`` only.
"""
import matplotlib

matplotlib.use("Agg")  # once for every report module: they draw to files, never to a screen
