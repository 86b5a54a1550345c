"""
The fault campaign: the real worker, learner and alert consumers as processes against the real
broker and Redis on loopback, with faults injected while events are published, checked against
the replay of the same input (the oracle).

The harness of tests/integration/test_stream.py (the stack of one test, its processes, the
readers) is shared: that directory is put on the path. Tests marked `long` (the five-runs-in-
a-row variants) run with `.venv/bin/pytest -m long tests/faults`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test under tests/faults with the `integration` marker: they need services."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
