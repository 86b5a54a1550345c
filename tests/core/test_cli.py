"""
The command line: what a user types, what they see, and the files it writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from churnwatch.cli import main
from churnwatch.core.engine import Policy
from churnwatch.core.rules import default_rules

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str]:
    """Run the command; the output with its white space folded (tables wrap at 80 columns)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


def test_rules_check_accepts_the_shipped_files() -> None:
    """
    `rules check` passes the default and example files and prints their versions.
    """
    files = [
        str(ROOT / "rules/default.yaml"),
        *map(str, sorted((ROOT / "rules/examples").glob("*.yaml"))),
    ]
    code, out = run("rules", "check", *files)
    assert 0 == code
    assert out.count(": ok (version ") == len(files)


def test_rules_check_names_file_line_and_field(tmp_path: Path) -> None:
    """
    A broken rules file fails with its file, line and field in the message.
    """
    text = (ROOT / "rules/default.yaml").read_text().replace("margin: 10", "margin: ten")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = CliRunner().invoke(main, ["rules", "check", str(bad)])
    assert 1 == result.exit_code
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "margin: ten" in row)
    assert f"{bad}:{line}: score_rules[0].margin" in result.output


def test_the_demo_gives_the_same_alert_bytes_in_processes_with_other_hash_seeds(
    tmp_path: Path,
) -> None:
    """
    Two demo runs in separate processes with different PYTHONHASHSEEDs (so dict and set orders
    of strings differ) write byte-identical alerts.
    """
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"alerts-{seed}.jsonl"
        args = ["demo", "--customers", "150", "--days", "60", "--seed", "4", "--quiet"]
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from churnwatch.cli import main; main()",
                *args,
                "--alerts-out",
                str(out),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=300,
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0]


def test_schemas_check_is_in_sync() -> None:
    """
    `schemas check` finds the committed schema files equal to the models.
    """
    code, out = run("schemas", "check", "--dir", str(ROOT / "schemas"))
    assert 0 == code
    assert "in sync" in out


def test_demo_prints_the_report_and_is_deterministic(tmp_path: Path) -> None:
    """
    Two demo runs with the same seed write byte-identical alerts and print the report tables.
    """
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        code, out = run(
            "demo",
            "--customers",
            "150",
            "--days",
            "60",
            "--seed",
            "4",
            "--quiet",
            "--alerts-out",
            str(tmp_path / name),
        )
        assert 0 == code
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    assert outs[0]
    for heading in (
        "Records",
        "Alerts by rule and by action",
        "How well and how early",
        "Example alerts",
        "alert precision",
        "lead time",
        "model AUC",
    ):
        assert heading in out
    assert "consumed == processed + duplicates + dead-lettered: yes" in out


def test_simulate_then_replay_a_file(tmp_path: Path) -> None:
    """
    `simulate --out` writes events and labels; `replay` of the file balances its counts.
    """
    code, _ = run(
        "simulate",
        "--customers",
        "80",
        "--days",
        "40",
        "--seed",
        "2",
        "--out",
        str(tmp_path),
        "--malformed-rate",
        "0.01",
    )
    assert 0 == code
    events = tmp_path / "events.jsonl"
    assert events.exists()
    assert (tmp_path / "labels.csv").read_text().startswith("customer_id,segment,churned,churn_at")
    alerts = tmp_path / "alerts.jsonl"
    dead = tmp_path / "dead.jsonl"
    code, out = run(
        "replay", str(events), "--alerts-out", str(alerts), "--dead-letters-out", str(dead)
    )
    assert 0 == code
    assert "consumed == processed + duplicates + dead-lettered: yes" in out
    lines = [row for row in events.read_bytes().split(b"\n") if row]
    assert f"{len(lines):,}" in out
    assert dead.read_bytes().count(b"\n") > 0


def test_simulate_says_what_it_wrote_in_words() -> None:
    """
    `simulate --out` ends with a sentence of counts that matches the files, not a raw object.
    """
    runner = CliRunner()
    with runner.isolated_filesystem():
        result = runner.invoke(
            main, ["simulate", "--customers", "30", "--days", "10", "--out", "sim"]
        )
        records = len(Path("sim/events.jsonl").read_bytes().splitlines())
    assert 0 == result.exit_code, result.output
    assert "SimSummary(" not in result.output
    assert f"30 customers over 10 days: {records:,} records" in result.output


def test_replay_says_its_partition_count_and_numbers_dead_letters_by_line(
    tmp_path: Path,
) -> None:
    """
    `replay --quiet` says how many partitions it mirrors and where that came from, and each
    dead letter carries the file's line number (from 1, as `publish` counts) beside its
    position (from 0).
    """
    events = tmp_path / "events.jsonl"
    good = b'{"event_id":"e1","type":"login","customer_id":"c1","ts":"2026-01-01T00:00:00Z"}'
    events.write_bytes(good + b"\nnot json\n")
    dead = tmp_path / "dead.jsonl"
    args = ["replay", str(events), "--quiet", "--dead-letters-out", str(dead)]
    result = CliRunner().invoke(main, [*args, "--partitions", "3"])
    assert 0 == result.exit_code, result.output
    assert "replaying with 3 partitions (--partitions)" in result.output
    (letter,) = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert (1, 2) == (letter["position"], letter["line"])
    result = CliRunner().invoke(main, args)
    assert "replaying with 6 partitions (CHURNWATCH_KAFKA_PARTITIONS, as the workers)" in (
        result.output
    )
    result = CliRunner().invoke(main, args, env={"CHURNWATCH_KAFKA_PARTITIONS": "4"})
    assert "replaying with 4 partitions (CHURNWATCH_KAFKA_PARTITIONS, as the workers)" in (
        result.output
    )


def test_one_partition_count_for_the_topics_the_workers_the_api_and_the_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The replay's result depends on the partition count (a watermark per partition), so the
    replay, the topics, the workers, the API and the notifier read one setting with one
    default: CHURNWATCH_KAFKA_PARTITIONS, 6 (CHURNWATCH_PARTITIONS is an older name of it).
    """
    from churnwatch.api.settings import ApiSettings
    from churnwatch.core.partitioning import DEFAULT_PARTITIONS
    from churnwatch.notify.settings import NotifySettings
    from churnwatch.replay.engine import Replay
    from churnwatch.sdk.settings import KafkaSettings
    from churnwatch.settings import CoreSettings
    from churnwatch.stream.settings import WorkerSettings

    def counts() -> list[int]:
        return [
            CoreSettings().partitions,
            KafkaSettings().partitions,
            ApiSettings().topic_partitions,
            NotifySettings().kafka.partitions,
            WorkerSettings().partitions_count,
        ]

    for name in ("CHURNWATCH_KAFKA_PARTITIONS", "CHURNWATCH_PARTITIONS"):
        monkeypatch.delenv(name, raising=False)
    assert [DEFAULT_PARTITIONS] * 5 == counts()
    assert DEFAULT_PARTITIONS == Replay(Policy.build(default_rules())).partitions
    monkeypatch.setenv("CHURNWATCH_KAFKA_PARTITIONS", "3")
    assert [3] * 5 == counts()


def test_simulate_needs_a_destination() -> None:
    """
    `simulate` without --out or --to-kafka is a usage error that says what to give.
    """
    result = CliRunner().invoke(main, ["simulate", "--customers", "5"])
    assert 2 == result.exit_code
    assert "--out DIR or --to-kafka" in result.output


def test_output_off_a_terminal_is_plain_and_does_not_wrap(tmp_path: Path) -> None:
    """
    Piped (not a terminal), `replay` writes plain progress lines to stderr, its last one with
    the count done, no control codes anywhere, and tables 200 columns wide, so a caption of 56
    characters stays on one line where 80 columns split it.
    """
    events = tmp_path / "events.jsonl"
    result = CliRunner().invoke(
        main, ["simulate", "--customers", "20", "--days", "10", "--out", str(tmp_path)]
    )
    assert 0 == result.exit_code, result.output
    lines = sum(1 for line in events.read_bytes().splitlines() if line)
    ran = subprocess.run(
        [sys.executable, "-m", "churnwatch.cli", "replay", str(events)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert 0 == ran.returncode, ran.stderr
    assert "\x1b" not in ran.stdout + ran.stderr
    assert f"replaying: done, {lines:,} records of {lines:,} (100%)" in ran.stderr
    assert "consumed == processed + duplicates + dead-lettered: yes" in ran.stdout


def test_demo_progress_counts_simulated_days_of_a_known_total() -> None:
    """
    Piped, the demo's progress is plain lines in simulated days out of the total it was asked
    for (so a reader knows how far it is), and `replay`'s lines carry the file's line count.
    """
    ran = subprocess.run(
        [sys.executable, "-m", "churnwatch.cli", "demo", "--customers", "30", "--days", "12"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == ran.returncode, ran.stderr
    assert "\x1b" not in ran.stdout + ran.stderr
    assert "replaying: done, 12 days of 12 (100%)" in ran.stderr
    quiet = subprocess.run(
        [
            sys.executable,
            "-m",
            "churnwatch.cli",
            "demo",
            "--customers",
            "30",
            "--days",
            "12",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == quiet.returncode, quiet.stderr
    assert "replaying" not in quiet.stderr
    assert ran.stdout.splitlines()[:-1] == quiet.stdout.splitlines()[:-1]  # the last has timing
