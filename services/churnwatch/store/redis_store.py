"""
The Redis store: customer states with their applied offsets, per-partition meta, due and risk
sorted sets, the outbox, model checkpoints, and the reads of the API, over redis-py's asyncio
clients (a single server or Redis Cluster). What is kept under which key, and the records and
codecs of a batch, are in `churnwatch.store.layout`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from churnwatch.core.errors import ChurnwatchError, ConfigError, StoreUnavailableError
from churnwatch.core.state import CustomerState, risk_change, to_dict
from churnwatch.store.layout import (
    OFFSET_FIELD,
    ORDERS,
    SOURCE_FIELD,
    BatchWrite,
    CorruptState,
    Keys,
    OutboxEntry,
    PartitionMeta,
    as_text,
    decode_history,
    decode_outbox,
    decode_state,
    encode_outbox,
    epoch_seconds,
    iso_or_empty,
)
from churnwatch.store.settings import StoreSettings

log = logging.getLogger(__name__)

WAITAOF_MIN_VERSION: Final = (7, 2)

Client: TypeAlias = "Redis | RedisCluster"
Command: TypeAlias = tuple[Any, ...]
_DRIVER_ERRORS: Final = (RedisError, RedisClusterException, OSError)

# Replace a customer's hash in one atomic step (one key, so fine in a cluster): delete every
# field the new state does not write, except the applied offsets `o:*` (a state written
# without an offset keeps the ones it had), then write the state and the new offset.
# ARGV: offset field ('' for none), offset, the fields as one JSON object (one argument
# instead of ~60 keeps redis-py's per-argument packing cost off the batch).
_WRITE_STATE: Final = b"""
local key = KEYS[1]
local fields = cjson.decode(ARGV[3])
local stale = {}
for _, name in ipairs(redis.call('HKEYS', key)) do
  if fields[name] == nil and string.sub(name, 1, 2) ~= 'o:' then stale[#stale + 1] = name end
end
if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
local args = {}
for name, value in pairs(fields) do
  args[#args + 1] = name
  args[#args + 1] = value
end
if ARGV[1] ~= '' then
  args[#args + 1] = ARGV[1]
  args[#args + 1] = ARGV[2]
end
redis.call('HSET', key, unpack(args))
return #stale
"""

# HGETALL of one customer as one JSON array: redis-py's pure-Python reply parser costs about
# 200 us per hash of ~60 bulk strings, a single string costs next to nothing (orjson); Redis
# spends ~10 us more per key. An empty hash encodes as `{}`.
_READ_STATE: Final = b"return cjson.encode(redis.call('HGETALL', KEYS[1]))"

# One verdict per alert, and the counts by `rule|verdict` in step with the verdicts (both keys
# carry the hash tag {fb}: one slot). KEYS: verdicts, counts; ARGV: alert_id, the verdict's
# JSON, verdict, rule. Returns the previous verdict ('' for none) and 1 when anything changed.
_SET_VERDICT: Final = b"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
local before = ''
if old then
  before = cjson.decode(old)['verdict']
  if before == ARGV[3] then return {before, 0} end
  redis.call('HINCRBY', KEYS[2], ARGV[4] .. '|' .. before, -1)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[4] .. '|' .. ARGV[3], 1)
return {before, 1}
"""


def version_tuple(text: str) -> tuple[int, ...]:
    """`"7.2.4"` -> `(7, 2, 4)`; the digits before any non-digit of each part."""
    parts: list[int] = []
    for part in text.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def waitaof_reason(version: str | None, appendonly: str | None) -> str | None:
    """
    Why WAITAOF cannot be used on a server, or None when it can (as far as INFO and CONFIG
    tell; `appendonly` None means CONFIG was refused and the command itself must be asked).
    """
    if version is not None and version_tuple(version) < WAITAOF_MIN_VERSION:
        return f"redis_version {version} < 7.2 has no WAITAOF"
    if appendonly is not None and appendonly != "yes":
        return f"appendonly is {appendonly!r}, not 'yes'"
    return None


def _hash(reply: object) -> dict[bytes, bytes]:
    # redis-py types HGETALL loosely; with decode_responses=False it is bytes -> bytes.
    return cast(dict[bytes, bytes], reply)


class RedisStore:
    """
    The streaming workers' Redis store. Build it from settings (no I/O), then `await start()`.

    Every driver error is raised as `StoreUnavailableError` naming the operation and the
    address (never the password), with the driver's exception chained.
    """

    def __init__(self, settings: StoreSettings) -> None:
        self._settings = settings
        self.keys = Keys(settings.prefix)
        self._client: Client | None = None
        self._waitaof = False
        self.waitaof_reason = "not started"
        """Why WAITAOF is or is not used (logged once at start as `store.waitaof`)."""

    @property
    def waitaof(self) -> bool:
        """Whether `write_batch` waits for the AOF fsync (WAITAOF) after writing."""
        return self._waitaof

    # -- lifecycle ----------------------------------------------------------------------
    def _secrets(self) -> list[str]:
        found: list[str] = []
        if self._settings.password is not None:
            found.append(self._settings.password.get_secret_value())
        try:
            url_password = parse_url(self._settings.url).get("password")
        except ValueError:
            url_password = None
        if url_password:
            found.append(str(url_password))
        return [s for s in found if s]

    def _error(self, op: str, exc: BaseException) -> StoreUnavailableError:
        detail = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets():
            detail = detail.replace(secret, "***")
        kind = "redis cluster" if self._settings.cluster else "redis"
        return StoreUnavailableError(f"{op} on {kind} at {self._settings.address}: {detail}")

    def _connection_kwargs(self) -> dict[str, Any]:
        s = self._settings
        try:
            parsed = parse_url(s.url)
        except ValueError as exc:
            msg = f"CHURNWATCH_REDIS_URL: expected a redis URL, got an invalid one ({exc})"
            raise ConfigError(msg) from exc
        kwargs: dict[str, Any] = {
            "username": s.username if s.username is not None else parsed.get("username"),
            "password": (
                s.password.get_secret_value() if s.password is not None else parsed.get("password")
            ),
            "socket_timeout": s.socket_timeout,
            "socket_connect_timeout": s.socket_timeout,
            "decode_responses": False,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        }
        tls = s.tls or s.url.startswith("rediss://")
        if tls:
            kwargs["ssl"] = True
            for name, path in (
                ("ssl_ca_certs", s.tls_ca_file),
                ("ssl_certfile", s.tls_cert_file),
                ("ssl_keyfile", s.tls_key_file),
            ):
                if path is not None:
                    if not path.is_file():
                        msg = f"{name}: expected a readable file, got {str(path)!r}"
                        raise ConfigError(msg)
                    kwargs[name] = str(path)
        if s.cluster:
            if parsed.get("db"):
                msg = f"url: Redis Cluster has only db 0, got db {parsed.get('db')}"
                raise ConfigError(msg)
            if s.cluster_nodes:
                nodes = [n.rpartition(":") for n in s.cluster_nodes]
                kwargs["startup_nodes"] = [ClusterNode(h.strip("[]"), int(p)) for h, _, p in nodes]
            else:
                kwargs["host"] = parsed.get("host", "127.0.0.1")
                kwargs["port"] = parsed.get("port", 6379)
        elif "path" in parsed:
            kwargs["unix_socket_path"] = parsed["path"]
            kwargs["db"] = parsed.get("db", 0)
        else:
            kwargs["host"] = parsed.get("host", "127.0.0.1")
            kwargs["port"] = parsed.get("port", 6379)
            kwargs["db"] = parsed.get("db", 0)
        return kwargs

    async def start(self) -> None:
        """Connect, check the server answers, and find out whether WAITAOF can be used."""
        if self._client is not None:
            return
        op = "start"
        kwargs = self._connection_kwargs()
        client: Client = RedisCluster(**kwargs) if self._settings.cluster else Redis(**kwargs)
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
            await client.ping()
            self._waitaof, self.waitaof_reason = await self._detect_waitaof(client, kwargs)
        except _DRIVER_ERRORS as exc:
            await client.aclose()
            raise self._error(op, exc) from exc
        self._client = client
        log.info(
            "store.waitaof",
            extra={
                "enabled": self._waitaof,
                "reason": self.waitaof_reason,
                "address": self._settings.address,
            },
        )

    async def _detect_waitaof(self, client: Client, kwargs: dict[str, Any]) -> tuple[bool, str]:
        if not self._settings.wait_aof:
            return False, "wait_aof is off in the settings"
        if isinstance(client, RedisCluster):
            node_kwargs = {k: v for k, v in kwargs.items() if k not in ("startup_nodes", "host")}
            node_kwargs.pop("port", None)
            for node in client.get_primaries():
                # A plain connection per primary: INFO and CONFIG replies of one node each.
                one = Redis(host=node.host, port=int(node.port), **node_kwargs)
                try:
                    reason = await self._waitaof_problem(one)
                finally:
                    await one.aclose()
                if reason is not None:
                    return False, f"{node.host}:{node.port}: {reason}"
            return True, "every primary has redis >= 7.2 with appendonly yes"
        reason = await self._waitaof_problem(client)
        if reason is not None:
            return False, reason
        return True, "redis >= 7.2 with appendonly yes"

    async def _waitaof_problem(self, client: Redis) -> str | None:
        version: str | None
        try:
            info = await client.info("server")
            version = str(info.get("redis_version", "")) or None
        except ResponseError:
            version = None  # INFO refused (ACL): the command itself will tell
        try:
            reply = cast(Mapping[Any, Any], await client.config_get("appendonly"))
            raw = reply.get(b"appendonly", reply.get("appendonly"))
            appendonly: str | None = None if raw is None else as_text(raw)
        except ResponseError:
            appendonly = None  # CONFIG renamed away or refused by an ACL
        reason = waitaof_reason(version, appendonly)
        if reason is not None or (version is not None and appendonly is not None):
            return reason
        # Unknown: ask WAITAOF itself. This connection wrote nothing, so it returns at once
        # when supported, and errors when the command is unknown or AOF is off.
        try:
            await self._pipeline(client, [("WAITAOF", 1, 0, 1)])
        except ResponseError as exc:
            return f"WAITAOF refused: {exc}"
        return None

    async def close(self) -> None:
        """Close every connection; the store can be started again."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @asynccontextmanager
    async def _op(self, op: str) -> AsyncIterator[Client]:
        client = self._client
        if client is None:
            msg = f"{op}: the redis store at {self._settings.address} is not started"
            raise StoreUnavailableError(msg)
        try:
            yield client
        except _DRIVER_ERRORS as exc:
            raise self._error(op, exc) from exc

    @staticmethod
    async def _pipeline(client: Client, commands: Iterable[Command]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    async def ping(self) -> None:
        async with self._op("ping") as client:
            await client.ping()

    def _pattern(self) -> str:
        """SCAN's pattern of every key under the prefix (glob characters in it escaped)."""
        escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.keys.prefix)
        return f"{escaped}:*"

    async def holds_data(self) -> bool:
        """Whether any key exists under the prefix (every node of a cluster is scanned)."""
        async with self._op("holds_data") as client:
            async for _key in client.scan_iter(match=self._pattern(), count=1000):
                return True
        return False

    async def clear(self) -> int:
        """Delete every key under the prefix (and nothing else); returns how many."""
        removed = 0
        async with self._op("clear") as client:
            batch: list[Any] = []
            async for key in client.scan_iter(match=self._pattern(), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await self._pipeline(client, [("UNLINK", k) for k in batch])
                    removed, batch = removed + len(batch), []
            if batch:
                await self._pipeline(client, [("UNLINK", k) for k in batch])
                removed += len(batch)
        return removed

    async def save_load_log(self, records: Sequence[bytes]) -> None:
        """Keep the records a load replayed (in their order), replacing any kept before."""
        key = self.keys.load_log()
        async with self._op("save_load_log") as client:
            await client.delete(key)
            for start in range(0, len(records), 10_000):
                await client.rpush(key, *records[start : start + 10_000])

    async def load_log(self) -> list[bytes]:
        """The records of the loads into this prefix, in order (empty: none kept)."""
        key = self.keys.load_log()
        out: list[bytes] = []
        async with self._op("load_log") as client:
            total = int(await client.llen(key))
            for start in range(0, total, 10_000):
                chunk = await client.lrange(key, start, start + 9_999)
                out += [bytes(r) for r in cast(list[bytes], chunk)]
        return out

    # -- customers ----------------------------------------------------------------------
    async def load_states(
        self, customer_ids: Iterable[str], *, corrupt: list[CorruptState] | None = None
    ) -> dict[str, tuple[CustomerState, dict[int, int]]]:
        """
        The states of these customers and their applied offsets by partition, read with one
        pipeline (HGETALL of each, inside a one-line script that returns it as one string);
        customers never written are absent.

        Args:
            customer_ids: whose states to read.
            corrupt: where to report states that cannot be read (they are left out, as if
                never written); without it such a state raises ChurnwatchError.
        """
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return {}
        keys = [self.keys.customer(cid) for cid in ids]
        async with self._op("load_states") as client:
            replies = await self._pipeline(client, [("EVAL", _READ_STATE, 1, k) for k in keys])
        found: dict[str, tuple[CustomerState, dict[int, int]]] = {}
        for cid, key, reply in zip(ids, keys, replies, strict=True):
            try:
                decoded = decode_state(key, reply)
            except ValueError as exc:
                if corrupt is None:
                    msg = f"redis store: key {key!r} does not hold a customer state: {exc}"
                    raise ChurnwatchError(msg) from exc
                corrupt.append(CorruptState(cid, key, str(exc), bytes(reply)))
                continue
            if decoded is not None:
                found[cid] = decoded
        return found

    async def load_state(self, customer_id: str) -> CustomerState | None:
        """One customer's state, or None when it was never written."""
        found = await self.load_states([customer_id])
        return found[customer_id][0] if customer_id in found else None

    # -- partitions ---------------------------------------------------------------------
    async def load_partition(self, partition: int) -> PartitionMeta:
        """The partition's meta; all None when nothing was written for it yet."""
        async with self._op("load_partition") as client:
            raw = _hash(await client.hgetall(self.keys.meta(partition)))
        data = {k.decode(): v.decode() for k, v in raw.items()}
        high_water = data.get("high_water") or None
        watermark = data.get("watermark") or None
        last_offset = data.get("last_offset") or None
        sources = {
            k[len(SOURCE_FIELD) :]: int(v) for k, v in data.items() if k.startswith(SOURCE_FIELD)
        }
        return PartitionMeta(
            high_water=None if high_water is None else datetime.fromisoformat(high_water),
            watermark=None if watermark is None else datetime.fromisoformat(watermark),
            last_offset=None if last_offset is None else int(last_offset),
            sources=sources,
        )

    async def due_customers(
        self, partition: int, until: datetime, limit: int = 10_000
    ) -> list[str]:
        """The customers of the partition whose next due time is at or before `until`."""
        score = epoch_seconds(until, "due_customers until")
        async with self._op("due_customers") as client:
            members = await client.zrangebyscore(
                self.keys.due(partition), "-inf", score, start=0, num=limit
            )
        return [as_text(m) for m in cast(list[bytes], members)]

    def _batch_commands(self, batch: BatchWrite) -> tuple[list[Command], ...]:
        keys, p = self.keys, batch.partition
        seq_base = -1 if batch.meta.last_offset is None else batch.meta.last_offset
        outbox: list[Command] = []
        if batch.outbox:
            pairs: list[Any] = []
            for i, entry in enumerate(batch.outbox):
                pairs += [entry.entry_id, encode_outbox(entry, (seq_base, i))]
            outbox.append(("HSET", keys.outbox(p), *pairs))
        states: list[Command] = []
        orders: dict[str, list[Any]] = {}
        removals: dict[str, list[str]] = {}
        segments = tuple(batch.segments)
        for state, offset in batch.states:
            fields = orjson.dumps(to_dict(state))
            states.append(
                (
                    "EVAL",
                    _WRITE_STATE,
                    1,
                    keys.customer(state.customer_id),
                    "" if offset is None else f"{OFFSET_FIELD}{p}",
                    "" if offset is None else offset,
                    fields,
                )
            )
            self._order_commands(state, p, segments, orders, removals)
        states += self._history_commands(batch)
        part: list[Command] = []
        due_add: list[Any] = []
        due_rem: list[str] = []
        for customer_id, due_at in batch.due.items():
            if due_at is None:
                due_rem.append(customer_id)
            else:
                due_add += [epoch_seconds(due_at, f"due of {customer_id!r}"), customer_id]
        if due_add:
            part.append(("ZADD", keys.due(p), *due_add))
        if due_rem:
            part.append(("ZREM", keys.due(p), *due_rem))
        part += [("ZADD", key, *pairs) for key, pairs in orders.items()]
        part += [("ZREM", key, *members) for key, members in removals.items()]
        if batch.alerts:
            newest: dict[str, float] = {}
            for alert in batch.alerts:
                at = epoch_seconds(alert.at, f"alert {alert.alert_id!r}")
                newest[alert.customer_id] = max(at, newest.get(alert.customer_id, at))
            opened = [x for cid, at in sorted(newest.items()) for x in (at, cid)]
            part.append(("ZADD", keys.open_alerts(p), "GT", *opened))
        meta = batch.meta
        last: list[Command] = []
        last.append(
            (
                "HSET",
                keys.meta(p),
                "high_water",
                iso_or_empty(meta.high_water, "meta.high_water"),
                "watermark",
                iso_or_empty(meta.watermark, "meta.watermark"),
                "last_offset",
                "" if meta.last_offset is None else str(meta.last_offset),
                *(x for k, v in sorted(meta.sources.items()) for x in (SOURCE_FIELD + k, str(v))),
            )
        )
        # The due, risk and open-alert sets go with the outbox, before the states: a write cut
        # short after a state (Redis stopped mid-pipeline) must not leave that state without
        # its due entry, since the retry skips the state's events as applied and would never
        # write it again; an entry ahead of its state is harmless (the sweep recomputes the
        # due time from the state it loads). All of these are partition keys: one node.
        return [*outbox, *part], states, last

    def _order_commands(
        self,
        state: CustomerState,
        p: int,
        segments: tuple[str, ...],
        orders: dict[str, list[Any]],
        removals: dict[str, list[str]],
    ) -> None:
        """
        The customer's places in the at-risk orders (all, and its segment's only); a customer
        who cancelled is lost, no longer at risk, and leaves them.
        """
        cid = state.customer_id
        lost = state.cancelled_at is not None
        values = {
            "risk": None if lost else state.churn_probability,
            "change": None if lost else risk_change(state),
        }
        for sort, value in values.items():
            for segment in (None, *segments):
                key = self.keys.order(p, sort, segment)
                mine = segment is None or segment == state.segment
                if mine and value is not None:
                    orders.setdefault(key, []).extend((value, cid))
                else:
                    removals.setdefault(key, []).append(cid)

    def _history_commands(self, batch: BatchWrite) -> list[Command]:
        """Score and alert histories (customer slots) and the alert index, trimmed to size."""
        keys, kept = self.keys, self._settings
        commands: list[Command] = []
        points: dict[str, list[Any]] = {}
        for point in batch.history:
            at = epoch_seconds(point.at, f"history of {point.customer_id!r}")
            points.setdefault(point.customer_id, []).extend((at, point.encode()))
        for cid, pairs in points.items():
            commands.append(("ZADD", keys.history(cid), *pairs))
            commands.append(("ZREMRANGEBYRANK", keys.history(cid), 0, -kept.history_kept - 1))
        alerts: dict[str, list[Any]] = {}
        index: list[str] = []
        for alert in batch.alerts:
            at = epoch_seconds(alert.at, f"alert {alert.alert_id!r}")
            alerts.setdefault(alert.customer_id, []).extend((at, alert.value))
            index += [alert.alert_id, alert.customer_id]
        for cid, pairs in alerts.items():
            commands.append(("ZADD", keys.alerts(cid), *pairs))
            commands.append(("ZREMRANGEBYRANK", keys.alerts(cid), 0, -kept.alerts_kept - 1))
        if index:
            commands.append(("HSET", keys.alert_index(), *index))
        return commands

    async def write_batch(self, batch: BatchWrite) -> None:
        """
        Write one batch: outbox entries and the partition's due, risk and open-alert sets
        first, then the states with their applied offsets and score histories, and the
        partition meta last; then wait for the AOF fsync (WAITAOF) when the server supports it.

        On one server this is one pipeline (one round trip): the server applies it in order,
        so whatever prefix survives a crash or a shutdown, the meta is never ahead of the
        states, nor a state ahead of the outbox or of its due entry. A cluster applies a
        pipeline per node in parallel, so there the three groups go in three pipelines, one
        after the other.

        Raises:
            StoreUnavailableError: Redis failed, or WAITAOF did not confirm the fsync in time.
        """
        phases = self._batch_commands(batch)
        timeout_ms = int(self._settings.wait_aof_timeout * 1000)
        async with self._op("write_batch") as client:
            if isinstance(client, RedisCluster):
                replies = await self._write_cluster(client, phases, timeout_ms)
            else:
                commands = [c for phase in phases for c in phase]
                if self._waitaof:
                    commands.append(("WAITAOF", 1, 0, timeout_ms))
                    replies = [(await self._pipeline(client, commands))[-1]]
                else:
                    await self._pipeline(client, commands)
                    replies = []
        for reply in replies:
            if int(reply[0]) < 1:
                msg = (
                    f"write_batch on redis at {self._settings.address}: written, but WAITAOF "
                    f"did not confirm the AOF fsync within {self._settings.wait_aof_timeout}s"
                )
                raise StoreUnavailableError(msg)

    async def _write_cluster(
        self, client: RedisCluster, phases: tuple[list[Command], ...], timeout_ms: int
    ) -> list[Any]:
        outbox, states, part = phases
        waits: list[Any] = []
        for i, phase in enumerate((outbox, states, part)):
            if not phase:
                continue
            pipe = client.pipeline(transaction=False)
            for command in phase:
                pipe.execute_command(*command)
            # WAITAOF waits for the writes of its own connection: one per node written in this
            # phase, queued after them (a node's commands share one connection). The partition
            # node's wait in the last phase covers the outbox and the sets written there in the
            # first.
            nodes: dict[str, ClusterNode] = {}
            if self._waitaof and i > 0:
                for command in phase:
                    key = command[3] if command[0] == "EVAL" else command[1]
                    node = client.get_node_from_key(key)
                    if node is not None:
                        nodes[node.name] = node
                for node in nodes.values():
                    pipe.execute_command("WAITAOF", 1, 0, timeout_ms, target_nodes=node)
            replies = await pipe.execute()
            if nodes:
                waits += replies[-len(nodes) :]
        return waits

    async def outbox(self, partition: int) -> list[OutboxEntry]:
        """The entries still in the partition's outbox, in the order they were written."""
        async with self._op("outbox") as client:
            raw = _hash(await client.hgetall(self.keys.outbox(partition)))
        decoded = [decode_outbox(k.decode(), v) for k, v in raw.items()]
        return [entry for _, entry in sorted(decoded, key=lambda d: (d[0], d[1].entry_id))]

    async def clear_outbox(self, partition: int, entry_ids: Iterable[str]) -> None:
        """Remove these entries (produced and acknowledged) from the partition's outbox."""
        ids = list(entry_ids)
        if not ids:
            return
        async with self._op("clear_outbox") as client:
            await client.hdel(self.keys.outbox(partition), *ids)

    # -- model checkpoints --------------------------------------------------------------
    async def save_checkpoint(self, epoch: int, data: bytes) -> None:
        """
        Store the checkpoint of `epoch`, point `latest` at the newest epoch, and keep only the
        newest `checkpoints_kept` checkpoints.
        """
        keys = self.keys
        kept = self._settings.checkpoints_kept
        async with self._op("save_checkpoint") as client:
            # All checkpoint keys share the hash tag {model}: one node, applied in order.
            replies = await self._pipeline(
                client,
                [
                    ("SET", keys.checkpoint(epoch), data),
                    ("ZADD", keys.versions(), epoch, epoch),
                    ("ZREVRANGE", keys.versions(), 0, -1),
                ],
            )
            epochs = [int(as_text(e)) for e in replies[-1]]
            trim = epochs[kept:]
            tidy: list[Command] = [("SET", keys.latest(), str(epochs[0]))]
            tidy += [("DEL", keys.checkpoint(old)) for old in trim]
            if trim:
                tidy.append(("ZREM", keys.versions(), *trim))
            await self._pipeline(client, tidy)

    async def load_checkpoint(self, epoch: int) -> bytes | None:
        """The checkpoint of `epoch`, or None."""
        async with self._op("load_checkpoint") as client:
            data = await client.get(self.keys.checkpoint(epoch))
        return None if data is None else bytes(cast(bytes, data))

    async def latest_checkpoint(self, *, at_most: int | None = None) -> tuple[int, bytes] | None:
        """The newest checkpoint whose epoch is at most `at_most` (any when None), or None."""
        top = "+inf" if at_most is None else at_most
        async with self._op("latest_checkpoint") as client:
            # A few candidates: one may be trimmed between the two reads.
            found = await client.zrevrangebyscore(self.keys.versions(), top, "-inf", 0, 3)
            epochs = [int(e) for e in cast(list[bytes], found)]
            if not epochs:
                return None
            blobs = await self._pipeline(client, [("GET", self.keys.checkpoint(e)) for e in epochs])
        for epoch, blob in zip(epochs, blobs, strict=True):
            if blob is not None:
                return epoch, bytes(blob)
        return None

    # -- reads for the API and the CLI --------------------------------------------------
    async def at_risk(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        partitions: Iterable[int],
        segment: str | None = None,
        sort: str = "risk",
    ) -> list[tuple[str, float]]:
        """
        Customers by churn probability (`sort="risk"`) or by its change since the anchor
        (`sort="change"`), highest first, merged over the partitions (ties: customer id
        descending, as Redis orders them), of one segment or of all, from `offset` for `limit`.
        """
        if offset < 0:
            msg = f"at_risk: offset must be >= 0, got {offset}"
            raise ValueError(msg)
        if sort not in ORDERS:
            msg = f"at_risk: sort must be one of {', '.join(ORDERS)}, got {sort!r}"
            raise ValueError(msg)
        parts = list(dict.fromkeys(partitions))
        if limit <= 0 or not parts:
            return []
        stop = offset + limit - 1
        keys = [self.keys.order(p, sort, segment) for p in parts]
        async with self._op("at_risk") as client:
            replies = await self._pipeline(
                client, [("ZREVRANGE", key, 0, stop, "WITHSCORES") for key in keys]
            )
        merged = [(as_text(m), float(s)) for reply in replies for m, s in reply]
        merged.sort(key=lambda item: (item[1], item[0]), reverse=True)
        return merged[offset : offset + limit]

    async def needing_action(
        self,
        *,
        partitions: Iterable[int],
        bounds: Mapping[str, float],
        segment: str | None = None,
        sort: str = "risk",
    ) -> list[tuple[str, float]]:
        """
        The customers who need action, highest `sort` first (ties: customer id descending, as
        `at_risk`): those whose churn probability is above their segment's bound (`bounds`:
        segment -> probability, exclusive; a segment without one has none), and those with an
        open alert (`open_alerts`) who are still in the at-risk orders (not cancelled). With
        `segment`, of that segment only. A customer without a `change` sorts last by change.
        """
        if sort not in ORDERS:
            msg = f"needing_action: sort must be one of {', '.join(ORDERS)}, got {sort!r}"
            raise ValueError(msg)
        parts = list(dict.fromkeys(partitions))
        wanted = {s: b for s, b in bounds.items() if segment is None or s == segment}
        commands: list[Command] = []
        for p in parts:
            commands += [
                ("ZRANGEBYSCORE", self.keys.order(p, "risk", s), f"({b!r}", "+inf")
                for s, b in sorted(wanted.items())
            ]
            commands.append(("ZRANGE", self.keys.open_alerts(p), 0, -1))
        async with self._op("needing_action") as client:
            replies = await self._pipeline(client, commands) if commands else []
            found: dict[int, set[str]] = {}
            opened: dict[int, list[str]] = {}
            per = len(wanted) + 1
            for i, p in enumerate(parts):
                chunk = replies[i * per : (i + 1) * per]
                found[p] = {as_text(m) for reply in chunk[:-1] for m in reply}
                opened[p] = [as_text(m) for m in chunk[-1] if as_text(m) not in found[p]]
            # The open ones count while still in the order asked for (listed, of the segment).
            with_open = [p for p in parts if opened[p]]
            listed = await self._pipeline(
                client,
                [("ZMSCORE", self.keys.order(p, "risk", segment), *opened[p]) for p in with_open],
            )
            for p, reply in zip(with_open, listed, strict=True):
                found[p] |= {m for m, v in zip(opened[p], reply, strict=True) if v is not None}
            order = [(p, sorted(found[p])) for p in parts if found[p]]
            values = await self._pipeline(
                client,
                [("ZMSCORE", self.keys.order(p, sort, None), *members) for p, members in order],
            )
        ranked = [
            (cid, float("-inf") if v is None else float(v))
            for (_, members), reply in zip(order, values, strict=True)
            for cid, v in zip(members, reply, strict=True)
        ]
        ranked.sort(key=lambda item: (item[1], item[0]), reverse=True)
        return ranked

    async def close_alert(self, customer_id: str, partition: int, open_ids: Iterable[str]) -> None:
        """
        The customer's alerts got verdicts: leave the open set if none of `open_ids` (its
        alerts still without a verdict) is left.
        """
        if not list(open_ids):
            async with self._op("close_alert") as client:
                await client.zrem(self.keys.open_alerts(partition), customer_id)

    async def at_risk_total(
        self, *, partitions: Iterable[int], segment: str | None = None, sort: str = "risk"
    ) -> int:
        """How many customers the at-risk order `sort` holds (of one segment or of all)."""
        keys = [self.keys.order(p, sort, segment) for p in dict.fromkeys(partitions)]
        async with self._op("at_risk_total") as client:
            counts = await self._pipeline(client, [("ZCARD", key) for key in keys])
        return sum(int(n) for n in counts)

    async def score_history(self, customer_id: str, *, limit: int = 128) -> list[dict[str, Any]]:
        """The customer's newest `limit` scorings, oldest first."""
        async with self._op("score_history") as client:
            raw = await client.zrange(self.keys.history(customer_id), -limit, -1)
        return [decode_history(item) for item in cast(list[bytes], raw)]

    async def customer_alerts(self, customer_id: str, *, limit: int = 100) -> list[bytes]:
        """The customer's newest `limit` alerts as published (JSON), newest first."""
        async with self._op("customer_alerts") as client:
            raw = await client.zrevrange(self.keys.alerts(customer_id), 0, limit - 1)
        return [bytes(item) for item in cast(list[bytes], raw)]

    async def alerts_of(
        self, customer_ids: Iterable[str], *, limit: int = 100
    ) -> dict[str, list[bytes]]:
        """`customer_alerts` of several customers in one pipeline."""
        ids = list(dict.fromkeys(customer_ids))
        if not ids:
            return {}
        commands = [("ZREVRANGE", self.keys.alerts(cid), 0, limit - 1) for cid in ids]
        async with self._op("alerts_of") as client:
            replies = await self._pipeline(client, commands)
        return {cid: [bytes(a) for a in r] for cid, r in zip(ids, replies, strict=True)}

    async def customer_ids(self) -> list[str]:
        """Every customer with a state under the prefix (a SCAN of every node), sorted."""
        head = f"{self.keys.prefix}:c:{{"
        pattern = f"{self._pattern()[:-1]}c:{{*}}"
        found: set[str] = set()
        async with self._op("customer_ids") as client:
            async for key in client.scan_iter(match=pattern, count=1000):
                text = as_text(key)
                if text.startswith(head) and text.endswith("}"):
                    found.add(text[len(head) : -1])
        return sorted(found)

    async def histories_since(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, list[tuple[datetime, float]]]:
        """
        Each customer's kept scorings after `since` and the newest one up to it, as (event
        time, churn probability), oldest first; one pipeline.
        """
        at = epoch_seconds(since, "histories_since")
        commands: list[Command] = []
        for cid in customer_ids:
            key = self.keys.history(cid)
            commands += [
                ("ZREVRANGEBYSCORE", key, at, "-inf", "LIMIT", 0, 1),
                ("ZRANGEBYSCORE", key, f"({at!r}", "+inf"),
            ]
        async with self._op("histories_since") as client:
            replies = await self._pipeline(client, commands) if commands else []
        out: dict[str, list[tuple[datetime, float]]] = {}
        for i, cid in enumerate(customer_ids):
            points = []
            for raw in (*replies[2 * i], *replies[2 * i + 1]):
                ms, p, _ = bytes(raw).decode().split("|")
                points.append((datetime.fromtimestamp(int(ms) / 1000, tz=UTC), float(p)))
            out[cid] = points
        return out

    async def alerts_since(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, list[bytes]]:
        """Each customer's kept alerts (their JSON) after `since`, oldest first; one pipeline."""
        at = f"({epoch_seconds(since, 'alerts_since')!r}"
        commands = [("ZRANGEBYSCORE", self.keys.alerts(cid), at, "+inf") for cid in customer_ids]
        async with self._op("alerts_since") as client:
            replies = await self._pipeline(client, commands) if commands else []
        return {cid: [bytes(a) for a in r] for cid, r in zip(customer_ids, replies, strict=True)}

    async def open_alert_customers(self, partitions: Iterable[int]) -> set[str]:
        """The customers with an alert that has no verdict yet (every partition's open set)."""
        keys = [self.keys.open_alerts(p) for p in dict.fromkeys(partitions)]
        async with self._op("open_alert_customers") as client:
            replies = await self._pipeline(client, [("ZRANGE", key, 0, -1) for key in keys])
        return {as_text(m) for reply in replies for m in reply}

    async def alert_customer(self, alert_id: str) -> str | None:
        """The customer an alert was for, or None for an alert the store never saw."""
        async with self._op("alert_customer") as client:
            found = await client.hget(self.keys.alert_index(), alert_id)
        return None if found is None else as_text(found)

    # -- feedback on alerts --------------------------------------------------------------
    async def set_verdict(
        self, alert_id: str, *, verdict: str, rule: str, record: Mapping[str, Any]
    ) -> tuple[str | None, bool]:
        """
        Store a CSM's verdict on an alert: one per alert (a new verdict replaces the old one,
        the same verdict again changes nothing), with the counts by rule and verdict kept in
        step in the same script.

        Returns:
            The previous verdict (None for the first) and whether anything changed.
        """
        if "|" in rule or "|" in verdict:
            msg = f"set_verdict: rule and verdict must not contain '|', got {rule!r}, {verdict!r}"
            raise ValueError(msg)
        value = orjson.dumps(dict(record), option=orjson.OPT_SORT_KEYS)
        async with self._op("set_verdict") as client:
            command = (
                "EVAL",
                _SET_VERDICT,
                2,
                self.keys.verdicts(),
                self.keys.verdict_counts(),
                alert_id,
                value,
                verdict,
                rule,
            )
            [(previous, changed)] = await self._pipeline(client, [command])
        before = as_text(previous)
        return (before or None), bool(int(changed))

    async def verdicts(self, alert_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The verdicts given on these alerts (alerts without one are absent)."""
        ids = list(dict.fromkeys(alert_ids))
        if not ids:
            return {}
        async with self._op("verdicts") as client:
            raw = await client.hmget(self.keys.verdicts(), ids)
        return {aid: orjson.loads(v) for aid, v in zip(ids, cast(list[Any], raw), strict=True) if v}

    async def all_verdicts(self) -> dict[str, dict[str, Any]]:
        """Every verdict by alert id (for the export that the backtest reads)."""
        found: dict[str, dict[str, Any]] = {}
        async with self._op("all_verdicts") as client:
            async for key, value in client.hscan_iter(self.keys.verdicts(), count=1000):
                found[as_text(key)] = orjson.loads(value)
        return found

    async def verdict_counts(self) -> dict[tuple[str, str], int]:
        """How many alerts of each rule carry each verdict."""
        async with self._op("verdict_counts") as client:
            raw = _hash(await client.hgetall(self.keys.verdict_counts()))
        counts: dict[tuple[str, str], int] = {}
        for key, value in raw.items():
            rule, _, verdict = key.decode().rpartition("|")
            counts[(rule, verdict)] = int(value)
        return counts
