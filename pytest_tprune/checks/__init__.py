"""The checks: the ``tprune_case`` API, expectations, goldens, Hypothesis strategies and properties.

Modules here may import the engine and :mod:`pytest_tprune.reports`, never
pytest's hooks or the session; Hypothesis is imported only by
:mod:`~pytest_tprune.checks.strategies`.
"""
