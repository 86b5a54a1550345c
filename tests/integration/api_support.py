"""
The at-risk API on loopback for tests: a store seeded from a replay of simulated customers (the
same `BatchWrite` the scoring workers write), and the API server running in its own thread and
event loop, so that a test (or a synchronous browser driver) talks to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import orjson

from churnwatch.api.app import ApiServer
from churnwatch.api.load import Loaded, load_history
from churnwatch.api.settings import ApiSettings
from churnwatch.core.alerts import AlertRecord, Reason, alert_id_for, alert_to_json
from churnwatch.core.partitioning import partition_of
from churnwatch.core.state import CustomerState
from churnwatch.sim.simulator import SimConfig, Simulation
from churnwatch.store import BatchWrite, PartitionMeta, RedisStore, StoredAlert, StoreSettings

T = TypeVar("T")
PARTITIONS = 3


@dataclass
class HttpReply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ApiSite:
    """A seeded store and the API over it; `close()` stops the server and the loop."""

    redis_url: str
    prefix: str
    customers: int = 120
    days: int = 90
    seed: int = 11
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    loaded: Loaded | None = None
    server: ApiServer | None = None
    added: int = 0
    auth: dict[str, Any] = field(default_factory=lambda: {"auth": "off"})
    """The API's auth settings (`auth`, `read_token`, `write_token`); off: loopback tests."""
    token: str | None = None
    """The bearer token `request` sends (None: none)."""
    tokens: dict[str, str] = field(default_factory=dict)
    """The read and write tokens of a guarded site (`guarded_api_site`)."""

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def start(self) -> None:
        threading.Thread(target=self.loop.run_forever, daemon=True, name="api-site").start()
        store_settings = StoreSettings(url=self.redis_url, prefix=self.prefix)
        self.settings = ApiSettings(
            port=0, redis=store_settings, topic_partitions=PARTITIONS, **self.auth
        )
        self.store = RedisStore(store_settings)
        self.call(self.store.start())
        records = list(Simulation(SimConfig(self.customers, self.days, seed=self.seed)).records())
        policy = self.settings.to_policy()
        self.loaded = self.call(load_history(self.store, records, policy, partitions=PARTITIONS))
        self.server = ApiServer(self.settings)
        self.call(self.server.start())

    def close(self) -> None:
        if self.server is not None:
            self.call(self.server.stop())
        self.call(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def states(self) -> dict[str, CustomerState]:
        """The seeded customers' states, read back from Redis."""
        assert self.loaded is not None
        ids = [f"c{n:06d}" for n in range(self.customers + 10)]
        found = self.call(self.store.load_states(ids))
        return {cid: state for cid, (state, _) in found.items()}

    @property
    def expected_order(self) -> list[str]:
        """The at-risk order by score, computed from the states (not from the API's sets)."""
        ranked = [
            (s.churn_probability, cid)
            for cid, s in self.states().items()
            if s.churn_probability is not None and s.cancelled_at is None
        ]
        ranked.sort(reverse=True)
        return [cid for _, cid in ranked]

    @property
    def expected_action_order(self) -> list[str]:
        """
        The customers who need action, in score order, computed from the states, the rules and
        the stored alerts (not from the API's sets): an engagement score below the highest
        threshold of the segment's score rules, or one of the newest 20 alerts without a
        verdict.
        """
        rules = self.settings.to_policy().rules
        states = {
            cid: s
            for cid, s in self.states().items()
            if s.churn_probability is not None and s.cancelled_at is None
        }
        alerts = self.call(self.store.alerts_of(list(states), limit=20))
        ids = [orjson.loads(raw)["alert_id"] for found in alerts.values() for raw in found]
        judged = self.call(self.store.verdicts(ids))
        ranked = []
        for cid, s in states.items():
            threshold = max(rule.threshold_for(s.segment) for rule in rules.score_rules)
            assert s.churn_probability is not None
            below = s.churn_probability > 1.0 - threshold / 100.0
            unjudged = any(
                orjson.loads(raw)["alert_id"] not in judged for raw in alerts.get(cid, [])
            )
            if below or unjudged:
                ranked.append((s.churn_probability, cid))
        ranked.sort(reverse=True)
        return [cid for _, cid in ranked]

    def request(self, method: str, path: str, body: Any = None) -> HttpReply:
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                raw, status, got = reply.read(), reply.status, dict(reply.headers)
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
        text = raw.decode()
        is_json = text.startswith(("{", "["))
        return HttpReply(status, orjson.loads(raw) if is_json else text, got)

    def get_json(self, path: str) -> Any:
        reply = self.request("GET", path)
        assert 200 == reply.status, reply.body
        return reply.body

    def add_alert(self, customer_id: str, rule: str = "urgent_ticket") -> str:
        """
        Write a new alert for a seeded customer through `write_batch`, as the scoring worker
        does after an event (a day after the customer's last scoring); returns its alert_id.
        """
        state = self.states()[customer_id]
        assert state.scored_at is not None
        assert state.churn_probability is not None
        self.added += 1
        at = state.scored_at + timedelta(days=1, seconds=self.added)
        alert = AlertRecord(
            alert_id=alert_id_for(customer_id, rule, at),
            customer_id=customer_id,
            rule=rule,
            severity="high",
            action="csm_task",
            score=state.score or 0.0,
            previous_score=None,
            threshold=None,
            churn_probability=state.churn_probability,
            reasons=[Reason(factor="urgent_tickets", contribution=0.1, text="1 urgent ticket")],
            summary="risk 0.50: 1 urgent ticket open (+0.10)",
            segment=state.segment,
            event_ts=at,
            emitted_at=at,
            model_version="test",
            rules_version="test",
        )
        stored = StoredAlert(customer_id, alert.alert_id, at, alert_to_json(alert))
        pid = partition_of(customer_id, PARTITIONS)
        meta = self.call(self.store.load_partition(pid))
        self.call(
            self.store.write_batch(
                BatchWrite(
                    pid,
                    PartitionMeta(meta.high_water, meta.watermark, meta.last_offset),
                    alerts=[stored],
                )
            )
        )
        return alert.alert_id
