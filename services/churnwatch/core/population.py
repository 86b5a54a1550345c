"""
What the learner knows of the population besides the model's weights: how much evidence it has
for each kind of customer (cold start by evidence), and how long customers usually go between
activities (the label horizon learned from the stream).

Both are counts over the examples the model learned, in the learner's deterministic order
(`core.learning`), and travel in the model checkpoint; so a scorer at event time t reads the
counts of the checkpoint it scores with, and a replay of the same events reads the same counts.
Nothing here reads a clock: the horizon is a function of the event-time history.

Cohorts. A customer's cohort is the bucket of its event count (1, 2, 3-4, 5-8, 9-16, 17+) and
of its tenure (under 7 days, 7-30, a month or more). The model's weight in a customer's score
grows with the labels learned from its cohort, so a new kind of customer leans on the rules'
prior until the model has seen enough of its kind, and a one-time buyer of six months is judged
by what the model learned of established one-time buyers. (Finer tenure buckets starve: the
labels of customers as old as today's resolve a horizon later, so the oldest cohort of a young
history has almost none.)

Gaps. Every example taken at an activity (its `days_since_event` is 0) carries the gap that
ended there (`last_gap_days`): the time since the customer's activity before. They are counted
in a histogram of fixed logarithmic buckets (8 per doubling, from about 22 minutes to 1,024
days), and the label horizon is the 90th percentile of those gaps, rounded up to a whole day
and held within [the configured horizon, `MAX_HORIZON_DAYS`]: silent for longer than nine in
ten of the gaps customers come back from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

GAP_FEATURE: Final = "last_gap_days"
SILENCE_FEATURE: Final = "days_since_event"
_LOW: Final = -6  # log2 of the smallest bucket's lower edge, in days (1/64 day)
_PER_OCTAVE: Final = 8
_BUCKETS: Final = (10 - _LOW) * _PER_OCTAVE  # up to 2**10 = 1,024 days
GAP_QUANTILE: Final = 0.9
MIN_GAPS: Final = 100
"""Below this many observed gaps the horizon is not learned yet (the configured one holds)."""
MAX_HORIZON_DAYS: Final = 365.0


def cohort_of(x: Mapping[str, float]) -> int:
    """The cohort index of features `x`: events bucket * 6 + tenure bucket."""
    # the buckets of the module docstring, as comparisons: this runs at every scoring
    events = x.get("event_count", 0.0)
    tenure = x.get("tenure_days", 0.0)
    if events <= 2.0:
        e = 0 if events <= 1.0 else 1
    elif events <= 8.0:
        e = 2 if events <= 4.0 else 3
    else:
        e = 4 if events <= 16.0 else 5
    t = 0 if tenure < 7.0 else (1 if tenure < 30.0 else 2)
    return e * 3 + t


def _bucket(days: float) -> int:
    index = math.floor((math.log2(days) - _LOW) * _PER_OCTAVE)
    return min(max(index, 0), _BUCKETS - 1)


def _edge(index: int) -> float:
    return float(2.0 ** (_LOW + index / _PER_OCTAVE))


class Population:
    """
    Evidence per cohort and the histogram of gaps; mutable, owned by the learner's `Scorer`.
    """

    __slots__ = ("_cache", "_evidence", "_gaps", "_n_gaps")

    def __init__(self) -> None:
        self._evidence: dict[int, int] = {}
        self._gaps: list[int] = [0] * _BUCKETS
        self._n_gaps = 0
        # horizon_days by floor, until the next observation (scorers ask at every event)
        self._cache: dict[float, float] = {}

    def observe(self, x: Mapping[str, float]) -> None:
        """Count one learned example: its cohort, and the gap it ended if taken at an activity."""
        cohort = cohort_of(x)
        self._evidence[cohort] = self._evidence.get(cohort, 0) + 1
        gap = x.get(GAP_FEATURE, 0.0)
        if x.get(SILENCE_FEATURE, 1.0) == 0.0 and gap > 0.0 and math.isfinite(gap):
            self._gaps[_bucket(gap)] += 1
            self._n_gaps += 1
            self._cache.clear()

    def evidence(self, x: Mapping[str, float]) -> int:
        """Labels learned from the cohort of features `x`."""
        return self._evidence.get(cohort_of(x), 0)

    @property
    def gaps(self) -> int:
        """Gaps observed so far."""
        return self._n_gaps

    def gap_quantile(self, q: float = GAP_QUANTILE) -> float | None:
        """
        The q-quantile of the observed gaps in days (log-linear within its bucket), or None
        below `MIN_GAPS` observations.
        """
        n = self._n_gaps
        if n < MIN_GAPS:
            return None
        target = q * n
        seen = 0
        for index, count in enumerate(self._gaps):
            if count and seen + count >= target:
                share = (target - seen) / count
                low = _LOW + index / _PER_OCTAVE
                return float(2.0 ** (low + share / _PER_OCTAVE))
            seen += count
        return _edge(_BUCKETS)

    def horizon_days(self, floor_days: float) -> float:
        """
        The label horizon in whole days: the gaps' 90th percentile rounded up, within
        [`floor_days`, `MAX_HORIZON_DAYS`]; `floor_days` until enough gaps are known.
        """
        known = self._cache.get(floor_days)
        if known is not None:
            return known
        q = self.gap_quantile()
        days = floor_days
        if q is not None:
            days = min(max(float(math.ceil(q)), floor_days), max(MAX_HORIZON_DAYS, floor_days))
        self._cache[floor_days] = days
        return days

    def to_state(self) -> dict[str, object]:
        return {"evidence": sorted(self._evidence.items()), "gaps": list(self._gaps)}

    @classmethod
    def from_state(cls, state: Mapping[str, object] | None) -> Population:
        """The inverse of `to_state`; None (a checkpoint written before these counts) is empty."""
        out = cls()
        if state is None:
            return out
        evidence = state["evidence"]
        gaps = state["gaps"]
        if not isinstance(evidence, list) or not isinstance(gaps, list) or len(gaps) != _BUCKETS:
            msg = f"population counts: expected evidence pairs and {_BUCKETS} gap buckets"
            raise ValueError(msg)
        out._evidence = {int(k): int(v) for k, v in evidence}
        out._gaps = [int(v) for v in gaps]
        out._n_gaps = sum(out._gaps)
        return out

    def copy(self) -> Population:
        twin = Population()
        twin._evidence = dict(self._evidence)
        twin._gaps = list(self._gaps)
        twin._n_gaps = self._n_gaps
        return twin

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Population):
            return NotImplemented
        return self._evidence == other._evidence and self._gaps == other._gaps

    __hash__ = None  # type: ignore[assignment]
