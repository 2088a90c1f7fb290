"""The hypothesis settings of the hardening tests: a small budget so CI stays fast.

``INTERMODAL_FUZZ_EXAMPLES`` raises the number of examples per property (e.g. 500 for a
deeper local run).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("INTERMODAL_FUZZ_EXAMPLES", "25"))

fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every CI run; a failure replays exactly
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
"""Settings for every hypothesis test in this folder."""
