"""
`churnwatch load` into a Redis prefix that already holds data refuses (a second history would
merge into the first: current states from one file, histories from the other), and with
`--replace` deletes what is under the prefix, and only that, before loading.
"""

from __future__ import annotations

from pathlib import Path

import redis
from click.testing import CliRunner

from churnwatch.cli import main
from churnwatch.sim import SimConfig, Simulation


def history(path: Path, seed: int, customers: int) -> Path:
    records = Simulation(SimConfig(customers=customers, days=10, seed=seed)).records()
    path.write_bytes(b"".join(r + b"\n" for r in records))
    return path


def customers_under(client: redis.Redis, prefix: str) -> set[str]:
    return {
        key.split("{", 1)[1].split("}", 1)[0]
        for key in client.scan_iter(match=f"{prefix}:c:*", count=1000)
        if not key.endswith((":hist", ":alerts"))
    }


def test_load_refuses_a_prefix_in_use_and_replaces_it_when_told(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis_client: redis.Redis
) -> None:
    env = {"CHURNWATCH_REDIS_URL": redis_url, "CHURNWATCH_REDIS_PREFIX": redis_prefix}
    first = history(tmp_path / "a.jsonl", seed=1, customers=40)
    second = history(tmp_path / "b.jsonl", seed=2, customers=15)
    neighbour = f"{redis_prefix}-other:kept"
    redis_client.set(neighbour, "untouched")
    try:
        runner = CliRunner()
        loaded = runner.invoke(main, ["load", str(first)], env=env)
        assert 0 == loaded.exit_code, loaded.output
        before = customers_under(redis_client, redis_prefix)
        one = sorted(before)[0]
        state_before = redis_client.hgetall(f"{redis_prefix}:c:{{{one}}}")
        assert len(before) >= 30

        refused = runner.invoke(main, ["load", str(second)], env=env)
        assert 1 == refused.exit_code
        assert "already holds data" in refused.output
        assert "--replace" in refused.output
        assert "Traceback" not in refused.output
        assert before == customers_under(redis_client, redis_prefix)
        assert state_before == redis_client.hgetall(f"{redis_prefix}:c:{{{one}}}")

        replaced = runner.invoke(main, ["load", "--replace", str(second)], env=env)
        assert 0 == replaced.exit_code, replaced.output
        assert "deleted" in replaced.output
        after = customers_under(redis_client, redis_prefix)
        assert 5 <= len(after) <= 15
        fresh_prefix = f"{redis_prefix}-fresh"
        fresh = runner.invoke(
            main, ["load", str(second)], env={**env, "CHURNWATCH_REDIS_PREFIX": fresh_prefix}
        )
        assert 0 == fresh.exit_code, fresh.output
        assert customers_under(redis_client, fresh_prefix) == after
        for cid in sorted(after)[:5]:
            assert redis_client.hgetall(f"{fresh_prefix}:c:{{{cid}}}") == redis_client.hgetall(
                f"{redis_prefix}:c:{{{cid}}}"
            ), cid
        assert "untouched" == redis_client.get(neighbour)
    finally:
        redis_client.delete(neighbour)
        keys = list(redis_client.scan_iter(match=f"{redis_prefix}-fresh*", count=1000))
        if keys:
            redis_client.delete(*keys)
