"""
The customer simulator: deterministic, streaming in time order, valid events, a ground truth
that agrees with the events, and a churn signal a model can learn (but not perfectly).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

from churnwatch.core.errors import BadEventError, ChurnwatchError, ConfigError
from churnwatch.core.events import (
    Event,
    LoginEvent,
    PurchaseEvent,
    ReturnEvent,
    TicketEvent,
    event_to_json,
    parse_event,
)
from churnwatch.sim import (
    SimConfig,
    SimSummary,
    Simulation,
    Truth,
    read_truths,
    write_simulation,
)

H = timedelta(days=30)


@dataclass(frozen=True)
class Run:
    """
    One simulation, held in memory (small populations only).
    """

    config: SimConfig
    records: tuple[bytes, ...]
    truths: tuple[Truth, ...]
    summary: SimSummary

    @property
    def end_at(self) -> datetime:
        return self.config.start_at + timedelta(days=self.config.days)

    def events(self) -> list[Event]:
        return _parsed(self.config)

    def by_customer(self) -> dict[str, list[Event]]:
        result: dict[str, list[Event]] = defaultdict(list)
        for event in self.events():
            result[event.customer_id].append(event)
        return result


@cache
def run_of(config: SimConfig) -> Run:
    """
    Build (once per config) the records, truths and summary of a simulation.
    """
    sim = Simulation(config)
    records = tuple(sim.records())
    return Run(config, records, tuple(sim.truths()), sim.summary())


@cache
def _parsed(config: SimConfig) -> list[Event]:
    return [parse_event(raw) for raw in run_of(config).records]


SMALL = SimConfig(customers=300, days=60, seed=3)
MEDIUM = SimConfig(customers=2_000, days=120, seed=7)
MESSY = SimConfig(
    customers=400,
    days=45,
    seed=5,
    malformed_rate=0.05,
    duplicate_rate=0.05,
    disorder=timedelta(minutes=5),
)


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    """
    The same config writes byte-identical events.jsonl and labels.csv; another seed does not.
    """
    config = SimConfig(customers=200, days=40, seed=11, malformed_rate=0.02, duplicate_rate=0.02)
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_simulation(config, first)
    write_simulation(config, second)
    write_simulation(SimConfig(customers=200, days=40, seed=12), other)
    for name in ("events.jsonl", "labels.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
        assert (first / name).read_bytes() != (other / name).read_bytes()


def test_records_and_truths_repeat_on_a_second_pass() -> None:
    """
    Iterating records() again gives the same bytes; truths() before any pass equals after one.
    """
    sim = Simulation(SMALL)
    up_front = sim.truths()
    assert run_of(SMALL).records == tuple(sim.records())
    assert list(run_of(SMALL).truths) == up_front


def test_written_files_hold_the_records_and_the_truths(tmp_path: Path) -> None:
    """
    events.jsonl is the records one per line; labels.csv reads back to the same truths.
    """
    progress: list[int] = []
    summary = write_simulation(MESSY, tmp_path, progress=progress.append)
    run = run_of(MESSY)
    lines = (tmp_path / "events.jsonl").read_bytes().split(b"\n")
    assert [*run.records, b""] == lines
    assert {truth.customer_id: truth for truth in run.truths} == read_truths(
        tmp_path / "labels.csv"
    )
    assert run.summary == summary
    assert MESSY.days == len(progress)
    assert len(run.records) == progress[-1]
    header = (tmp_path / "labels.csv").read_text().splitlines()[0]
    assert "customer_id,segment,churned,churn_at,archetype" == header


def test_records_are_in_ts_order_without_disorder() -> None:
    """
    With disorder 0 the records come strictly in ts order (ties allowed).
    """
    stamps = [event.ts for event in run_of(MEDIUM).events()]
    assert sorted(stamps) == stamps


def test_disordered_records_are_late_by_at_most_the_disorder() -> None:
    """
    No record comes more than `disorder` after a later-stamped one, and some do come late.
    """
    latest = datetime.min.replace(tzinfo=UTC)
    lateness = []
    for raw in run_of(MESSY).records:
        try:
            event = parse_event(raw)
        except BadEventError:
            continue
        latest = max(latest, event.ts)
        lateness.append(latest - event.ts)
    assert max(lateness) <= MESSY.disorder
    assert max(lateness) > timedelta(0)


def test_valid_records_are_exactly_what_event_to_json_writes() -> None:
    """
    Every record of a clean run parses and round-trips to the same bytes, ts at ms precision.
    """
    run = run_of(MEDIUM)
    for raw, event in zip(run.records, run.events(), strict=True):
        assert raw == event_to_json(event)
        assert 0 == event.ts.microsecond % 1000
    assert run.summary.records == len(run.records)
    assert run.summary.events == len(run.records)


def test_malformed_records_fail_validation_and_the_rest_parse() -> None:
    """
    Malformed records are rejected with the reasons a stream meets; they never hold a newline.
    """
    run = run_of(MESSY)
    reasons: Counter[str] = Counter()
    valid = 0
    for raw in run.records:
        assert b"\n" not in raw
        try:
            parse_event(raw)
        except BadEventError as exc:
            reasons[exc.reason] += 1
        else:
            valid += 1
    assert run.summary.malformed == sum(reasons.values())
    assert run.summary.events + run.summary.duplicates == valid
    expected = {
        "malformed_json",
        "not_utf8",
        "wrong_type",
        "missing_field",
        "invalid_value",
        "naive_timestamp",
        "unknown_type",
        "oversize",
        "not_an_object",
    }
    assert expected == set(reasons)


def test_duplicates_are_the_same_bytes_twice_in_a_row() -> None:
    """
    A duplicate is the previous record again; an event id never appears with other bytes.
    """
    run = run_of(MESSY)
    repeats = sum(1 for a, b in pairwise(run.records) if a == b)
    assert run.summary.duplicates == repeats
    assert run.summary.duplicates > 0
    bytes_by_id: dict[str, set[bytes]] = defaultdict(set)
    for raw in run.records:
        try:
            bytes_by_id[parse_event(raw).event_id].add(raw)
        except BadEventError:
            continue
    assert {1} == {len(variants) for variants in bytes_by_id.values()}


def test_every_customer_has_a_truth_and_appears_in_the_events() -> None:
    """
    labels hold every customer once, each with events; churn_at is set exactly for churners.
    """
    run = run_of(MEDIUM)
    ids = [truth.customer_id for truth in run.truths]
    assert [f"c{i:06d}" for i in range(MEDIUM.customers)] == ids
    assert set(ids) == set(run.by_customer())
    assert all((truth.churn_at is not None) == truth.churned for truth in run.truths)
    assert {"starter", "growth", "enterprise"} == {truth.segment for truth in run.truths}


def test_churners_are_silent_after_churn_at() -> None:
    """
    A churner's last event is at churn_at; a cancel, when there is one, is that last event.
    """
    run = run_of(MEDIUM)
    events = run.by_customer()
    for truth in run.truths:
        if truth.churned:
            assert truth.churn_at == events[truth.customer_id][-1].ts
        kinds = [event.type for event in events[truth.customer_id]]
        if "cancel" in kinds:
            assert truth.churned
            assert ["cancel"] == kinds[kinds.index("cancel") :]


def test_customers_who_stay_are_never_silent_for_the_horizon() -> None:
    """
    A customer who did not churn has no gap of H, nor H of silence before the end.
    """
    run = run_of(MEDIUM)
    events = run.by_customer()
    for truth in run.truths:
        if truth.churned:
            continue
        stamps = [event.ts for event in events[truth.customer_id]] + [run.end_at]
        assert max(b - a for a, b in pairwise(stamps)) < H


def test_churn_share_is_in_the_expected_range() -> None:
    """
    Between 12% and 30% of 2,000 customers churn within 120 days, with every story present.
    """
    run = run_of(MEDIUM)
    share = sum(truth.churned for truth in run.truths) / len(run.truths)
    assert 0.12 <= share <= 0.30
    archetypes = {truth.archetype for truth in run.truths if truth.churned}
    assert {"slow_fade", "service_failure", "buyer_remorse", "sudden"} <= archetypes
    recovered = [t for t in run.truths if t.archetype == "bad_month" and not t.churned]
    assert len(recovered) > 20


def login_rates_before_churn(run: Run, archetype: str | None = None) -> tuple[int, float, float]:
    """
    Churners with 9 weeks of history: how many, and their mean logins per week in the 3 weeks
    before churn_at and in the 6 weeks before those.
    """
    events = run.by_customer()
    recent, earlier = [], []
    for truth in run.truths:
        if truth.churn_at is None or archetype not in (None, truth.archetype):
            continue
        cut, since = truth.churn_at - timedelta(weeks=3), truth.churn_at - timedelta(weeks=9)
        logins = [e.ts for e in events[truth.customer_id] if isinstance(e, LoginEvent)]
        if not logins or logins[0] > since:
            continue  # too little history to compare
        recent.append(sum(cut <= ts < truth.churn_at for ts in logins) / 3)
        earlier.append(sum(since <= ts < cut for ts in logins) / 6)
    return len(recent), statistics.mean(recent or [0]), statistics.mean(earlier or [0])


def test_churners_log_in_less_in_the_weeks_before_churn() -> None:
    """
    On average churners log in less per week in the 3 weeks before churn_at than in the 6 before.
    """
    count, recent, earlier = login_rates_before_churn(run_of(MEDIUM))
    assert count > 50
    assert recent < 0.8 * earlier
    count, recent, earlier = login_rates_before_churn(run_of(MEDIUM), "slow_fade")
    assert count > 20
    assert recent < 0.5 * earlier


def test_sudden_churners_give_no_warning() -> None:
    """
    Sudden churners exist, and log in nearly as often just before churning as earlier.
    """
    count, recent, earlier = login_rates_before_churn(run_of(MEDIUM), "sudden")
    assert count > 10
    assert recent > 0.6 * earlier


def test_volume_and_mix_of_events() -> None:
    """
    About 25-40 events per customer over 180 days: mostly logins, then purchases, tickets, returns.
    """
    run = run_of(SimConfig(customers=600, days=180, seed=1))
    by_type = run.summary.events_by_type
    assert 25 <= run.summary.events / run.config.customers <= 40
    assert by_type["login"] > by_type["purchase"] > by_type["return"] > 0
    assert by_type["purchase"] > by_type["ticket"] / 3 > 0
    assert by_type["cancel"] > 0


def test_purchase_only_and_new_customers_exist() -> None:
    """
    Some customers never log in, and some join well after the start (no history).
    """
    run = run_of(MEDIUM)
    events = run.by_customer()
    never_log_in = [c for c, evs in events.items() if not any(e.type == "login" for e in evs)]
    late = [c for c, evs in events.items() if evs[0].ts > MEDIUM.start_at + timedelta(days=40)]
    assert 0.08 <= len(never_log_in) / MEDIUM.customers <= 0.25
    assert 0.05 <= len(late) / MEDIUM.customers <= 0.25


def test_returns_and_ticket_updates_refer_to_earlier_events() -> None:
    """
    A return follows its purchase and is not larger; ticket updates follow their opening.
    """
    purchases: dict[str, PurchaseEvent] = {}
    opened: dict[str, TicketEvent] = {}
    updates = 0
    rated = 0
    for event in run_of(MEDIUM).events():
        if isinstance(event, PurchaseEvent):
            assert "EUR" == event.currency
            purchases[event.order_id] = event
        elif isinstance(event, ReturnEvent):
            purchase = purchases[event.order_id]
            assert (purchase.customer_id, True) == (event.customer_id, purchase.ts < event.ts)
            assert event.amount <= purchase.amount
        elif isinstance(event, TicketEvent) and event.status == "open":
            assert event.ticket_id not in opened
            opened[event.ticket_id] = event
        elif isinstance(event, TicketEvent):
            first = opened[event.ticket_id]
            assert (first.customer_id, first.severity) == (event.customer_id, event.severity)
            assert first.ts < event.ts
            updates += 1
            rated += event.csat is not None
    assert updates > len(opened) > 0
    assert rated > 0


@pytest.mark.parametrize(
    "changes",
    [
        {"customers": 0},
        {"days": 0},
        {"seed": -1},
        {"malformed_rate": 1.5},
        {"duplicate_rate": -0.1},
        {"disorder": timedelta(minutes=-1)},
        {"start_at": datetime(2026, 1, 1)},  # naive: the point of the case
        {"start_at": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)},
    ],
)
def test_bad_config_is_rejected(changes: dict[str, object]) -> None:
    """
    A config that cannot be simulated raises ConfigError naming the field.
    """
    with pytest.raises(ConfigError, match=next(iter(changes))):
        SimConfig(**changes)  # type: ignore[arg-type]


def test_summary_before_a_pass_is_an_error() -> None:
    """
    Asking for the counts before records() has run to the end raises ChurnwatchError.
    """
    with pytest.raises(ChurnwatchError, match="completed pass"):
        Simulation(SMALL).summary()


def test_bad_labels_file_names_the_line(tmp_path: Path) -> None:
    """
    read_truths rejects a bad churned value and names the line.
    """
    path = tmp_path / "labels.csv"
    path.write_text(
        "customer_id,segment,churned,churn_at,archetype\n"
        "c000001,starter,0,,loyal\n"
        "c000002,starter,yes,,loyal\n"
    )
    with pytest.raises(ChurnwatchError, match=r"labels.csv:3: churned must be 0 or 1"):
        read_truths(path)
