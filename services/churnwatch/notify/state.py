"""
Delivery state of the alert consumers in Redis: one hash per delivery, the weekly budgets and
the digest store. Every operation is one key (or one hash tag), atomic through a Lua script,
so it works on Redis Cluster.

Keys (prefix from `CHURNWATCH_REDIS_PREFIX`):

- `{prefix}:d:{<delivery_id>}` HASH: state, owner, lease_until (epoch ms), action, plan
  (JSON), attempts, takeovers, claimed_at, finished_at, detail.
- `{prefix}:n:b:{<recipient>|<ISO week>}` SET: the alert ids emailed to the recipient that
  week (the budget).
- `{prefix}:n:{digest}:day:<YYYY-MM-DD>` HASH: alert_id -> JSON {recipient, why, alert,
  source}; `{prefix}:n:{digest}:days` ZSET: the days with entries, score = the day's end
  (epoch seconds). Both share the `{digest}` tag, so one script can touch both.

A delivery id is an alert's `alert_id`, or `digest-<sha>` for a digest email. The states are
`sending` (claimed, with a lease) and the terminal `sent`, `digested`, `dead_lettered`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from redis.exceptions import RedisClusterException, RedisError

from churnwatch.core.errors import StoreUnavailableError
from churnwatch.notify.routing import Plan, day_end

ClaimKind = Literal["new", "takeover", "busy", "done"]
FinalState = Literal["sent", "digested", "dead_lettered"]
TERMINAL: Final[frozenset[str]] = frozenset({"sent", "digested", "dead_lettered"})

_CLAIM: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
local now = tonumber(ARGV[1])
local lease_until = tostring(now + tonumber(ARGV[2]))
if state == 'sent' or state == 'digested' or state == 'dead_lettered' then
  return {'done', state, '', '0', '0'}
end
if state == 'sending' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner ~= ARGV[3] and lease > now then
    return {'busy', state, '', '0', tostring(lease)}
  end
  redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'lease_until', lease_until)
  redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  local plan = redis.call('HGET', KEYS[1], 'plan') or ''
  local attempts = redis.call('HGET', KEYS[1], 'attempts') or '0'
  return {'takeover', state, plan, attempts, lease_until}
end
redis.call('HSET', KEYS[1], 'state', 'sending', 'owner', ARGV[3], 'lease_until', lease_until,
  'action', ARGV[4], 'claimed_at', ARGV[1], 'attempts', '0')
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {'new', 'sending', '', '0', lease_until}
"""

_RENEW: Final = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]
  or redis.call('HGET', KEYS[1], 'state') ~= 'sending' then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 1
"""

_FINISH: Final = """
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2], 'detail', ARGV[3])
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

_BUDGET: Final = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

_DIGEST_ADD: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

_DIGEST_REMOVE: Final = """
for i = 2, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

_DRIVER_ERRORS: Final = (RedisError, RedisClusterException, OSError)


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim on a delivery."""

    kind: ClaimKind
    """new: ours now; takeover: a dead owner's (its lease ran out), ours now; busy: another
    consumer holds a live lease; done: finished before (a redelivery)."""
    state: str
    plan: Plan | None = None
    attempts: int = 0
    """Attempts recorded before this claim (takeover only)."""
    lease_until: datetime | None = None


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DeliveryStore:
    """
    The alert consumers' state in Redis. `client` is a redis-py `Redis` or `RedisCluster`
    (sync, decode_responses=True).
    """

    def __init__(self, client: Any, *, prefix: str, lease: timedelta, ttl: timedelta) -> None:
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self.ttl_seconds = max(1, int(ttl.total_seconds()))
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._budget = client.register_script(_BUDGET)
        self._digest_add = client.register_script(_DIGEST_ADD)
        self._digest_remove = client.register_script(_DIGEST_REMOVE)

    # Keys.

    def delivery_key(self, delivery_id: str) -> str:
        return f"{self.prefix}:d:{{{delivery_id}}}"

    def budget_key(self, recipient: str, week: str) -> str:
        return f"{self.prefix}:n:b:{{{recipient}|{week}}}"

    def digest_day_key(self, day: date) -> str:
        return f"{self.prefix}:n:{{digest}}:day:{day.isoformat()}"

    def digest_days_key(self) -> str:
        return f"{self.prefix}:n:{{digest}}:days"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _DRIVER_ERRORS as exc:
            msg = f"Redis failed while {what}: {type(exc).__name__}"
            raise StoreUnavailableError(msg) from exc

    # Deliveries.

    def claim(self, delivery_id: str, *, action: str, owner: str, now: datetime) -> Claim:
        """
        Claims a delivery for `owner` with a lease of `self.lease` from `now`.
        """
        reply = self._call(
            "claiming a delivery",
            self._claim,
            keys=[self.delivery_key(delivery_id)],
            args=[_ms(now), _ms_of(self.lease), owner, action, self.ttl_seconds],
        )
        kind, state, plan, attempts, lease = (_text(v) for v in reply)
        return Claim(
            kind=kind,  # type: ignore[arg-type]  # the script returns one of ClaimKind
            state=state,
            plan=Plan.from_json(plan) if plan else None,
            attempts=int(attempts),
            lease_until=_at_ms(int(float(lease))) if lease != "0" else None,
        )

    def save_plan(self, delivery_id: str, plan: Plan) -> None:
        self._call(
            "saving a delivery plan",
            self.client.hset,
            self.delivery_key(delivery_id),
            "plan",
            plan.to_json(),
        )

    def renew(self, delivery_id: str, *, owner: str, now: datetime) -> bool:
        """
        Extends `owner`'s lease and counts an attempt; False when the delivery is no longer
        `owner`'s to make (another consumer took it over after the lease ran out).
        """
        reply = self._call(
            "renewing a lease",
            self._renew,
            keys=[self.delivery_key(delivery_id)],
            args=[owner, _ms(now + self.lease)],
        )
        return int(reply) == 1

    def finish(self, delivery_id: str, state: FinalState, *, now: datetime, detail: str) -> None:
        """Records a terminal state (a fact, whoever holds the lease)."""
        self._call(
            "recording a delivery",
            self._finish,
            keys=[self.delivery_key(delivery_id)],
            args=[state, _ms(now), detail[:500], self.ttl_seconds],
        )

    def state_of(self, delivery_id: str) -> dict[str, str]:
        """The stored hash of a delivery (empty when unknown)."""
        reply = self._call(
            "reading a delivery", self.client.hgetall, self.delivery_key(delivery_id)
        )
        return {_text(k): _text(v) for k, v in reply.items()}

    # Budgets.

    def take_budget(self, recipient: str, week: str, alert_id: str, budget: int) -> bool:
        """
        True when `alert_id` fits in (or already counts against) the recipient's budget of
        `budget` alert emails in `week`; False when the budget is spent.
        """
        reply = self._call(
            "checking a budget",
            self._budget,
            keys=[self.budget_key(recipient, week)],
            args=[alert_id, budget, 15 * 86400],
        )
        return int(reply) == 1

    # The digest store.

    def digest_add(self, day: date, alert_id: str, entry: str) -> None:
        """Adds (or replaces) one alert's entry in `day`'s digest."""
        end = int(day_end(day).timestamp())
        self._call(
            "adding to a digest",
            self._digest_add,
            keys=[self.digest_day_key(day), self.digest_days_key()],
            args=[alert_id, entry, end, day.isoformat(), self.ttl_seconds],
        )

    def digest_days_due(self, now: datetime) -> list[date]:
        """The days with digest entries whose end has passed at `now`, oldest first."""
        reply = self._call(
            "listing digest days",
            self.client.zrangebyscore,
            self.digest_days_key(),
            "-inf",
            int(now.timestamp()),
        )
        return [date.fromisoformat(_text(day)) for day in reply]

    def digest_entries(self, day: date) -> dict[str, str]:
        """`day`'s digest entries by alert id."""
        reply = self._call("reading a digest", self.client.hgetall, self.digest_day_key(day))
        return {_text(k): _text(v) for k, v in reply.items()}

    def digest_remove(self, day: date, alert_ids: list[str]) -> None:
        """Removes sent entries; the day leaves the index once it has none."""
        self._call(
            "removing digest entries",
            self._digest_remove,
            keys=[self.digest_day_key(day), self.digest_days_key()],
            args=[day.isoformat(), *alert_ids],
        )


def _ms_of(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)
