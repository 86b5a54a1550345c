"""
The customer simulator: realistic customer events with a ground truth (who churns, when, why).

See `churnwatch.sim.simulator` for how it works and what the truth means, and
`churnwatch.sim.population` for the customers of each regime (`subscription`, `shop`, `b2b`).
"""

from churnwatch.sim.population import REGIMES, Regime
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
    "REGIMES",
    "Regime",
    "SimConfig",
    "SimSummary",
    "Simulation",
    "Truth",
    "read_truths",
    "write_simulation",
    "write_truths",
]
