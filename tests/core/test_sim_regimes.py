"""
The simulator's regimes: a purchase-only `shop` and heavy `b2b` accounts look like those
businesses, keep the ground truth, and are as deterministic as the default `subscription`.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from churnwatch.cli import main, simulate
from churnwatch.core.errors import ConfigError
from churnwatch.core.events import event_to_json, parse_event
from churnwatch.sim import REGIMES, Regime, SimConfig, Simulation, Truth

YEAR = timedelta(days=365)

SHOP = SimConfig(customers=600, days=365, seed=3, regime="shop")
B2B = SimConfig(customers=120, days=365, seed=3, regime="b2b")
SUBSCRIPTION = SimConfig(customers=120, days=365, seed=3)
"""The default regime at B2B's size, to compare with."""


@dataclass(frozen=True, slots=True)
class Seen:
    """
    The fields of one valid event that these tests look at.
    """

    customer_id: str
    type: str
    ts: datetime
    amount: float
    status: str


@dataclass(frozen=True)
class Run:
    """
    One simulation, held in memory (small populations only).
    """

    config: SimConfig
    records: tuple[bytes, ...]
    truths: tuple[Truth, ...]
    events_by_type: dict[str, int]

    def events(self) -> list[Seen]:
        return _events(self.config)

    def by_customer(self) -> dict[str, list[Seen]]:
        result: dict[str, list[Seen]] = defaultdict(list)
        for event in self.events():
            result[event.customer_id].append(event)
        return result

    def purchases(self) -> dict[str, list[Seen]]:
        """
        Every customer's purchases (an empty list for those without any).
        """
        result: dict[str, list[Seen]] = {truth.customer_id: [] for truth in self.truths}
        for event in self.events():
            if event.type == "purchase":
                result[event.customer_id].append(event)
        return result


@cache
def run_of(config: SimConfig) -> Run:
    """
    Build (once per config) the records, truths and counts of a simulation.
    """
    sim = Simulation(config)
    records = tuple(sim.records())
    return Run(config, records, tuple(sim.truths()), sim.summary().events_by_type)


@cache
def _events(config: SimConfig) -> list[Seen]:
    # orjson rather than parse_event: a year of b2b accounts is a few hundred thousand events;
    # test_every_record_is_a_valid_event checks that they parse.
    result = []
    for raw in run_of(config).records:
        obj = orjson.loads(raw)
        ts = datetime.fromisoformat(obj["ts"])
        result.append(
            Seen(obj["customer_id"], obj["type"], ts, obj.get("amount", 0.0), obj.get("status", ""))
        )
    return result


def gaps_in_days(purchases: list[Seen]) -> list[int]:
    """
    The calendar days between one purchase and the next.
    """
    return [(b.ts.date() - a.ts.date()).days for a, b in pairwise(purchases)]


def per_customer(run: Run) -> float:
    return sum(run.events_by_type.values()) / run.config.customers


def tickets_opened(run: Run) -> int:
    return sum(event.type == "ticket" and event.status == "open" for event in run.events())


def test_shop_customers_never_log_in_and_never_cancel() -> None:
    """
    A shop's events are purchases, returns and a few tickets: no login, no cancel.
    """
    run = run_of(SHOP)
    counts = run.events_by_type
    assert (0, 0) == (counts["login"], counts["cancel"])
    assert counts["purchase"] > counts["return"] > 0
    assert 0 < tickets_opened(run) < counts["purchase"] / 5


def test_most_shop_customers_buy_at_most_twice_a_year() -> None:
    """
    Over a year most customers buy once or twice, many only once, and a minority more often.
    """
    run = run_of(SHOP)
    years = SHOP.days / 365
    counts = [len(purchases) / years for purchases in run.purchases().values()]
    assert sum(count <= 2 for count in counts) / len(counts) > 0.5
    assert sum(count == 1 for count in counts) / len(counts) > 0.3
    assert 0.1 < sum(count >= 3 for count in counts) / len(counts) < 0.5


def test_shop_repeat_buyers_come_back_after_weeks_to_months() -> None:
    """
    The median gap between a repeat buyer's purchases is between two weeks and six months.
    """
    run = run_of(SHOP)
    medians = [
        statistics.median(gaps_in_days(purchases))
        for purchases in run.purchases().values()
        if len(purchases) >= 2
    ]
    assert len(medians) > 100
    assert 14 <= statistics.median(medians) <= 180


@pytest.mark.parametrize("config", [SHOP, B2B], ids=["shop", "b2b"])
def test_every_customer_has_a_truth_and_appears_in_the_events(config: SimConfig) -> None:
    """
    Each regime has one truth per customer, every customer has events, and a churner's last
    event is at churn_at (a cancel, when it cancelled).
    """
    run = run_of(config)
    ids = [truth.customer_id for truth in run.truths]
    assert [f"c{i:06d}" for i in range(config.customers)] == ids
    events = run.by_customer()
    assert set(ids) == set(events)
    churners = [truth for truth in run.truths if truth.churned]
    assert churners
    for truth in run.truths:
        assert (truth.churn_at is not None) == truth.churned
        kinds = [event.type for event in events[truth.customer_id]]
        if truth.churned:
            assert truth.churn_at == events[truth.customer_id][-1].ts
        if "cancel" in kinds:
            assert truth.churned
            assert ["cancel"] == kinds[kinds.index("cancel") :]


def test_b2b_accounts_are_few_and_heavy() -> None:
    """
    A b2b account has far more events than a subscriber (at the same size and length), and
    logs in several times a day.
    """
    b2b, subscription = run_of(B2B), run_of(SUBSCRIPTION)
    assert per_customer(b2b) > 10 * per_customer(subscription)
    logins_per_day = [
        sum(event.type == "login" for event in events) / B2B.days
        for events in b2b.by_customer().values()
    ]
    assert statistics.median(logins_per_day) >= 2


def test_b2b_accounts_are_invoiced_monthly_or_quarterly() -> None:
    """
    An account's purchases are invoices a month (28-31 days) or a quarter (87-92) apart, and
    large next to a subscriber's purchases.
    """
    monthly = quarterly = 0
    for purchases in run_of(B2B).purchases().values():
        gaps = gaps_in_days(purchases)
        assert all(28 <= gap <= 31 or 87 <= gap <= 92 for gap in gaps), gaps
        monthly += bool(gaps) and max(gaps) <= 31
        quarterly += bool(gaps) and min(gaps) >= 87
    assert monthly > quarterly > 10

    def median_amount(config: SimConfig) -> float:
        return statistics.median(e.amount for e in run_of(config).events() if e.type == "purchase")

    assert median_amount(B2B) > 5 * median_amount(SUBSCRIPTION)


def test_b2b_accounts_open_more_tickets() -> None:
    """
    A b2b account opens tickets several times as often as a subscriber.
    """
    b2b, subscription = run_of(B2B), run_of(SUBSCRIPTION)
    assert tickets_opened(b2b) / B2B.customers > 3 * tickets_opened(subscription) / B2B.customers


def test_b2b_churn_is_rarer_and_sometimes_cancelled() -> None:
    """
    Fewer b2b accounts churn in a year than subscribers do, and some of them cancel.
    """

    def churn_share(config: SimConfig) -> float:
        truths = Simulation(config).truths()
        return sum(truth.churned for truth in truths) / len(truths)

    b2b = churn_share(SimConfig(customers=400, days=365, seed=3, regime="b2b"))
    subscription = churn_share(SimConfig(customers=400, days=365, seed=3))
    assert 0.0 < b2b < 0.6 * subscription
    run = run_of(B2B)
    churners = sum(truth.churned for truth in run.truths)
    assert 0 < run.events_by_type["cancel"] < churners


@pytest.mark.parametrize("regime", ["shop", "b2b"])
def test_same_seed_gives_the_same_bytes(regime: Regime) -> None:
    """
    The same config gives the same records and truths; another seed or regime does not.
    """
    config = SimConfig(
        customers=40, days=60, seed=11, malformed_rate=0.02, duplicate_rate=0.02, regime=regime
    )
    first, second = Simulation(config), Simulation(config)
    assert list(first.records()) == list(second.records())
    assert first.truths() == second.truths()
    other_seed = SimConfig(customers=40, days=60, seed=12, regime=regime)
    default = SimConfig(customers=40, days=60, seed=11, malformed_rate=0.02, duplicate_rate=0.02)
    assert list(first.records()) != list(Simulation(other_seed).records())
    assert list(first.records()) != list(Simulation(default).records())


def test_the_default_regime_keeps_its_bytes() -> None:
    """
    The default regime writes the bytes it wrote before there were regimes (a golden digest:
    change it only with a deliberate change to the subscription simulation).
    """
    records = Simulation(SimConfig(customers=200, days=30, seed=7)).records()
    digest = hashlib.sha256(b"\n".join(records)).hexdigest()
    assert "bf6a65298fcdfcdcb1c22b74fa876986a5c1940b6fd6002f360ce8ed94ac7122" == digest


@pytest.mark.parametrize("regime", ["shop", "b2b"])
def test_every_record_is_a_valid_event(regime: Regime) -> None:
    """
    A regime's records parse, and event_to_json writes them back byte for byte.
    """
    config = SimConfig(customers=30, days=90, seed=5, regime=regime)
    for raw in Simulation(config).records():
        assert raw == event_to_json(parse_event(raw))


def test_an_unknown_regime_is_rejected() -> None:
    """
    A regime the simulator does not know raises ConfigError naming the field, the value and the
    allowed values.
    """
    expected = "regime must be one of subscription, shop, b2b, got 'retail'"
    with pytest.raises(ConfigError, match=expected):
        SimConfig(regime="retail")  # type: ignore[arg-type]


def test_the_cli_offers_every_regime(tmp_path: Path) -> None:
    """
    `simulate --regime` offers exactly the simulator's regimes and writes that regime's events.
    """
    option = next(p for p in simulate.params if p.name == "regime")
    assert isinstance(option.type, click.Choice)
    assert list(REGIMES) == list(option.type.choices)
    args = ["simulate", "--customers", "5", "--days", "20", "--regime", "b2b", "--out"]
    result = CliRunner().invoke(main, [*args, str(tmp_path)])
    assert 0 == result.exit_code, result.output
    config = SimConfig(customers=5, days=20, seed=7, regime="b2b")
    expected = b"".join(raw + b"\n" for raw in Simulation(config).records())
    assert expected == (tmp_path / "events.jsonl").read_bytes()
