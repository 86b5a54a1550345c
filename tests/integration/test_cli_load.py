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


def test_append_continues_a_load_with_later_events_and_refuses_earlier_ones(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis_client: redis.Redis
) -> None:
    """
    `load --append` after a load, with events strictly after it, leaves what one load of both
    files gives (compared key by key with a fresh prefix); a file that starts at or before the
    end of what is stored is refused in one line and changes nothing; a prefix that no load
    wrote cannot be appended to.
    """
    import orjson

    env = {"CHURNWATCH_REDIS_URL": redis_url, "CHURNWATCH_REDIS_PREFIX": redis_prefix}
    whole = history(tmp_path / "whole.jsonl", seed=3, customers=30).read_bytes().splitlines()
    stamps = sorted(orjson.loads(r)["ts"] for r in whole if r.startswith(b'{"event_id"'))
    cut = stamps[len(stamps) * 2 // 3]

    def ts_of(raw: bytes) -> str | None:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return value.get("ts") if isinstance(value, dict) else None

    early = [r for r in whole if (ts_of(r) or "") <= cut]
    late = [r for r in whole if (ts_of(r) or "") > cut]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(r + b"\n" for r in early))
    second.write_bytes(b"".join(r + b"\n" for r in late))
    both = tmp_path / "both.jsonl"
    both.write_bytes(first.read_bytes() + second.read_bytes())
    fresh_prefix = f"{redis_prefix}-both"
    try:
        runner = CliRunner()
        assert 0 == runner.invoke(main, ["load", str(first)], env=env).exit_code
        one = sorted(customers_under(redis_client, redis_prefix))[0]
        state_before = redis_client.hgetall(f"{redis_prefix}:c:{{{one}}}")
        overlap = runner.invoke(main, ["load", "--append", str(first)], env=env)
        assert 1 == overlap.exit_code
        assert "strictly after what is stored" in overlap.output
        assert "Traceback" not in overlap.output
        assert state_before == redis_client.hgetall(f"{redis_prefix}:c:{{{one}}}")

        appended = runner.invoke(main, ["load", "--append", str(second)], env=env)
        assert 0 == appended.exit_code, appended.output
        assert "appended to the" in appended.output
        fresh_env = {**env, "CHURNWATCH_REDIS_PREFIX": fresh_prefix}
        assert 0 == runner.invoke(main, ["load", str(both)], env=fresh_env).exit_code
        ids = customers_under(redis_client, fresh_prefix)
        assert ids == customers_under(redis_client, redis_prefix)
        for cid in sorted(ids):
            for suffix in ("", ":hist", ":alerts"):
                mine = f"{redis_prefix}:c:{{{cid}}}{suffix}"
                theirs = f"{fresh_prefix}:c:{{{cid}}}{suffix}"
                if suffix:
                    assert redis_client.zrange(mine, 0, -1) == redis_client.zrange(theirs, 0, -1), (
                        cid,
                        suffix,
                    )
                else:
                    assert redis_client.hgetall(mine) == redis_client.hgetall(theirs), cid

        redis_client.set(f"{redis_prefix}-live:c:{{x}}", "a worker's")
        live_env = {**env, "CHURNWATCH_REDIS_PREFIX": f"{redis_prefix}-live"}
        refused = runner.invoke(main, ["load", "--append", str(second)], env=live_env)
        assert 1 == refused.exit_code
        assert "no `churnwatch load` wrote" in refused.output
        both_flags = runner.invoke(main, ["load", "--append", "--replace", str(second)], env=env)
        assert 2 == both_flags.exit_code
    finally:
        for pattern in (f"{redis_prefix}-both*", f"{redis_prefix}-live*"):
            keys = list(redis_client.scan_iter(match=pattern, count=1000))
            if keys:
                redis_client.delete(*keys)
