"""
CDNOW, a real purchase history, as churnwatch `purchase` events: the benchmark's and the real-
data test's input.

The file ships in the PyPI package `lifetimes` 0.11.3 (the `eval` extra) as
`lifetimes/datasets/CDNOW_master.txt`: 23,570 customers who first bought in 1997-Q1 and their
69,659 purchases until 1998-06-30 (customer, day, number of CDs, dollars). It is read from the
installed package and never copied into this repository.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import orjson

from churnwatch.core.errors import ConfigError

END: Final = datetime(1998, 6, 30, 23, 59, 59, tzinfo=UTC)
"""The end of the data."""


@dataclass(frozen=True, slots=True)
class Purchase:
    customer_id: str
    at: datetime
    amount: float
    line: int
    """The line of the file (1 = the first purchase): the event's id."""


def purchases(customers: int | None = None, *, sample: bool = False) -> list[Purchase]:
    """
    CDNOW's purchases in file order; with `customers`, those of customers 1..`customers` only.
    With `sample`, the 1/10 sample that `lifetimes` also ships (`CDNOW_sample.txt`: 2,357
    customers, ids prefixed `sample` so they never meet the master file's).

    Raises:
        ConfigError: the `lifetimes` package is not installed (pip install -e ".[eval]").
    """
    # Found, not imported: importing lifetimes would import pandas and its fitters.
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or spec.origin is None:
        msg = "CDNOW comes with the lifetimes package: pip install -e '.[eval]'"
        raise ConfigError(msg)
    name = "CDNOW_sample.txt" if sample else "CDNOW_master.txt"
    text = (Path(spec.origin).parent / "datasets" / name).read_text()
    rows = text.splitlines() if sample else text.splitlines()[1:]  # the master has a header
    prefix = "sample" if sample else "cdnow"
    out = []
    for line, row in enumerate(rows, 1):
        # master: customer, day, CDs, dollars; sample: customer, its master id, day, ...
        *ids, day, _cds, dollars = row.split()
        customer = ids[0]
        if customers is not None and int(customer) > customers:
            continue
        at = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
        out.append(Purchase(f"{prefix}{customer}", at, float(dollars), line))
    return out


def events(history: Sequence[Purchase], until: datetime) -> list[bytes]:
    """The purchases up to `until` as `purchase` events (JSON), in time order."""
    rows = sorted((p for p in history if p.at <= until), key=lambda p: (p.at, p.line))
    return [
        orjson.dumps(
            {
                "event_id": f"cdnow-{p.line}",
                "type": "purchase",
                "customer_id": p.customer_id,
                "ts": p.at.isoformat(),
                "amount": p.amount,
                "currency": "USD",
                "order_id": f"cdnow-o{p.line}",
            }
        )
        for p in rows
    ]


def churned_after(history: Sequence[Purchase], cut: datetime, until: datetime = END) -> set[str]:
    """Customers who bought up to `cut` and not in (`cut`, `until`]."""
    before = {p.customer_id for p in history if p.at <= cut}
    after = {p.customer_id for p in history if cut < p.at <= until}
    return before - after
