"""
Shared pytest configuration: hypothesis profiles `dev` (default) and `ci`, and the fixtures of
the real services (tests/services.py) for tests/integration and tests/faults.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["services"]

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
