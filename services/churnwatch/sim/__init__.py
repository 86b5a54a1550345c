"""
The customer simulator: realistic customer events with a ground truth (who churns, when, why).

See `churnwatch.sim.simulator` for how it works and what the truth means.
"""

from churnwatch.sim.simulator import (
    SimConfig,
    SimSummary,
    Simulation,
    Truth,
    read_truths,
    write_simulation,
    write_truths,
)

__all__ = [
    "SimConfig",
    "SimSummary",
    "Simulation",
    "Truth",
    "read_truths",
    "write_simulation",
    "write_truths",
]
