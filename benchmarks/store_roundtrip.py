"""
The Redis store's cost per customer state: what a scoring worker pays to write a batch's states
(with their score history, due and at-risk entries) and to read them back, in the worker's CPU.

Writes benchmarks/results/store_roundtrip.json and .md. Run against the local stack:

    eval "$(bash deploy/local/stack.sh up)"
    .venv/bin/python benchmarks/store_roundtrip.py [--customers 2000] [--states 1000]

The states are real: simulated customers replayed through the core (the first `--records` of
the history, so that most have pending snapshots, anchors and rule states). They are written
with `RedisStore.write_batch` in batches of `--batch` and read back with `load_states`, `--repeat`
times; CPU is `time.process_time` of this process (the client's side: building commands,
packing, parsing, the states' to_dict/from_dict), not Redis's. Whether redis-py found hiredis
is recorded beside the figures. Every key written is under a fresh prefix and deleted at the
end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
from typing import Any
from uuid import uuid4

import redis
from bench_io import machine, write_result
from redis.utils import HIREDIS_AVAILABLE

from churnwatch.core.state import CustomerState
from churnwatch.replay.engine import Replay
from churnwatch.settings import CoreSettings
from churnwatch.sim.simulator import SimConfig, Simulation
from churnwatch.store import BatchWrite, HistoryPoint, PartitionMeta, RedisStore
from churnwatch.store.settings import StoreSettings


def replayed_states(customers: int, records: int, states: int) -> list[CustomerState]:
    history = list(Simulation(SimConfig(customers=customers, days=180, seed=7)).records())
    replay = Replay(CoreSettings().to_policy())
    replay.run(history[:records])
    return [s for s in replay.states.values() if s.scored_at is not None][:states]


def batch_of(chunk: list[CustomerState], offset: int) -> BatchWrite:
    meta = PartitionMeta(**{f.name: None for f in dataclasses.fields(PartitionMeta)})
    history = [
        HistoryPoint(s.customer_id, s.scored_at, s.churn_probability or 0.0, s.score or 0.0)
        for s in chunk
        if s.scored_at is not None
    ]
    return BatchWrite(
        0,
        meta,
        states=[(s, offset) for s in chunk],
        due={s.customer_id: None for s in chunk},
        history=history,
    )


async def measure(url: str, prefix: str, states: list[CustomerState], args: Any) -> dict[str, Any]:
    store = RedisStore(StoreSettings(url=url, prefix=prefix))
    await store.start()
    chunks = [states[i : i + args.batch] for i in range(0, len(states), args.batch)]
    write = read = 0.0
    try:
        for _ in range(args.repeat):
            for n, chunk in enumerate(chunks):
                t = time.process_time()
                await store.write_batch(batch_of(chunk, n))
                write += time.process_time() - t
                t = time.process_time()
                loaded = await store.load_states([s.customer_id for s in chunk])
                read += time.process_time() - t
                if [loaded[s.customer_id][0] for s in chunk] != chunk:
                    msg = "a state read back differs from the one written"
                    raise SystemExit(msg)
    finally:
        await store.close()
    n = args.repeat * len(states)
    return {
        "write_us_per_state": round(write / n * 1e6, 1),
        "read_us_per_state": round(read / n * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--records", type=int, default=30_000, help="of the history replayed")
    parser.add_argument("--states", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    url = os.environ.get("CHURNWATCH_TEST_REDIS")
    if not url:
        msg = 'CHURNWATCH_TEST_REDIS is unset: run `eval "$(bash deploy/local/stack.sh up)"` first'
        raise SystemExit(msg)
    load_before = os.getloadavg()[0]
    states = replayed_states(args.customers, args.records, args.states)
    prefix = f"cw-store-bench-{uuid4().hex[:12]}"
    try:
        figures = asyncio.run(measure(url, prefix, states, args))
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    result = {
        "states": len(states),
        "batch": args.batch,
        "repeat": args.repeat,
        **figures,
        "hiredis": HIREDIS_AVAILABLE,
        "redis_py": redis.__version__,
        **machine(load_before),
    }
    command = (
        ".venv/bin/python benchmarks/store_roundtrip.py "
        f"--customers {args.customers} --states {args.states} --batch {args.batch}"
    )
    write_result(
        "store_roundtrip", "Redis store round trip (client CPU per customer state)", command, result
    )


if __name__ == "__main__":
    main()
