"""
Wrong numbers given to the CLI end in one error line naming what was wrong, with exit code 2,
never in a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from churnwatch.cli import main

EVENT = b'{"event_id":"e1","type":"login","customer_id":"c1","ts":"2026-01-01T00:00:00Z"}\n'


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["demo", "--customers", "-5"], "customers must be at least 1, got -5"),
        (["demo", "--customers", "0"], "customers must be at least 1, got 0"),
        (["demo", "--days", "-1"], "days must be at least 1, got -1"),
        (["demo", "--seed", "-3"], "seed must be a non-negative integer, got -3"),
        (["simulate", "--customers", "-5", "--out", "{tmp}"], "customers must be at least 1"),
        (["simulate", "--days", "0", "--out", "{tmp}"], "days must be at least 1, got 0"),
        (
            ["simulate", "--malformed-rate", "2", "--out", "{tmp}"],
            "malformed_rate must be in [0, 1], got 2.0",
        ),
        (["replay", "{events}", "--partitions", "0"], "'--partitions': 0 is not in the range"),
        (
            [
                "score",
                "--events",
                "{events}",
                "--as-of",
                "2026-02-01T00:00:00Z",
                "--out",
                "{tmp}/s.csv",
                "--partitions",
                "-2",
            ],
            "'--partitions': -2 is not in the range",
        ),
        (["backtest", "--events", "{events}", "--csms", "0"], "'--csms': 0 is not in the range"),
        (
            ["backtest", "--events", "{events}", "--alerts-per-csm", "0"],
            "'--alerts-per-csm': 0.0 is not in the range",
        ),
    ],
)
def test_a_wrong_number_is_one_error_line_with_exit_code_2(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    """
    Each command that takes numbers refuses an out-of-range one with exit code 2 and an error
    line that names the value; no traceback.
    """
    events = tmp_path / "events.jsonl"
    events.write_bytes(EVENT)
    argv = [a.format(tmp=tmp_path, events=events) for a in args]
    result = CliRunner().invoke(main, argv)
    assert 2 == result.exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert 1 == len(errors), result.output
    assert expected in errors[0]


def test_the_api_with_redis_away_says_so_and_never_its_url() -> None:
    """
    `churnwatch api` with an unreachable Redis ends in one error line naming Redis, and does
    not first print the URL it will never serve.
    """
    from needs import free_port

    env = {
        "CHURNWATCH_REDIS_URL": f"redis://127.0.0.1:{free_port()}",
        "CHURNWATCH_API_PORT": str(free_port()),
        "CHURNWATCH_API_AUTH": "off",
    }
    result = CliRunner().invoke(main, ["api"], env=env)
    assert 1 == result.exit_code, result.output
    assert "churnwatch api on http" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert 1 == len(errors), result.output
    assert "redis" in errors[0]
