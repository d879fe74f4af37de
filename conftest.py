"""Project-wide test configuration: pytester for the plugin's own end-to-end tests, Hypothesis profiles.

Profiles (select one with ``pytest --hypothesis-profile=NAME``; ``ci`` is loaded by default):

* ``ci``: derandomized (every run and every xdist worker draws the same
  examples, so a failure reproduces and CI is not flaky), few examples per
  property so the property suite stays within its time budget, no deadline
  (pruning a model takes seconds), and the ``@reproduce_failure`` blob printed.
* ``dev``: random draws, many more examples, the example database on: for
  hunting counterexamples locally.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=3,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")
