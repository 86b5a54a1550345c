"""
The README's tour, run as a new user would: the commands of "A short tour" and of "The at-risk
list, the web page and feedback", read from README.md itself, in order, in a fresh directory
(with `rules/` beside it, as in a clone), each one expected to end with exit code 0 and no
traceback or error line. So a change that breaks a command of the tour, or a tour that no
longer matches the commands, fails here.

What is not run as written: `. .venv/bin/activate` (this interpreter's scripts are on PATH
instead); `eval "$(bash deploy/local/stack.sh up)"` (the services are the tests' own, from
CHURNWATCH_TEST_REDIS); `churnwatch api` (with the README's settings before it), which the
README runs in a second terminal, runs in the background on a free port until its page and
overview answer, and is then stopped by its PID; ALERT_ID is an open alert's id shown by
`at-risk --alerts`. The customer and rule of `feedback --customer` are the README's own: the
test checks that customer has such an alert.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from needs import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
READY_S = 60


def _block_after(heading: str) -> list[str]:
    """The command lines of the first bash block under `heading` (comments and blanks out)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    lines = []
    for line in block.splitlines():
        command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def _run(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    said = done.stdout + done.stderr
    assert 0 == done.returncode, f"{line}\n{said[-3000:]}"
    assert "Traceback" not in said, f"{line}\n{said[-3000:]}"
    assert not re.search(r"^(Error|ERROR)\b", said, re.MULTILINE), f"{line}\n{said[-3000:]}"
    return done


def _tour_env(tmp_path: Path) -> dict[str, str]:
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CHURNWATCH_REDIS_URL", None)
    (tmp_path / "rules").symlink_to(REPO_ROOT / "rules")
    return env


def test_the_short_tour_runs_as_written(tmp_path: Path) -> None:
    """
    Every command of "A short tour", in order: the demos, simulate, replay, the rules check
    and the schemas export, with the files they say they write.
    """
    lines = _block_after("## A short tour")
    assert lines[0] == ". .venv/bin/activate"
    env = _tour_env(tmp_path)
    outputs = {line: _run(line, tmp_path, env) for line in lines[1:]}
    demo = next(o for line, o in outputs.items() if "--seed 3" in line)
    assert "5,000 customers over 120 days, seed 3" in demo.stdout
    assert (tmp_path / "alerts.jsonl").stat().st_size > 0
    assert (tmp_path / "data" / "events.jsonl").stat().st_size > 0
    assert (tmp_path / "data" / "labels.csv").stat().st_size > 0
    assert (tmp_path / "a.jsonl").stat().st_size > 0
    exported = sorted(p.name for p in (tmp_path / "schemas").glob("*.json"))
    assert exported == sorted(p.name for p in (REPO_ROOT / "schemas").glob("*.json"))


def _serve(line: str, cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`churnwatch api` in the background on a free port, once it says where it serves."""
    port = free_port()
    process = subprocess.Popen(
        shlex.split(line),
        cwd=cwd,
        env={**env, "CHURNWATCH_API_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + READY_S
    assert process.stderr is not None
    for said in process.stderr:  # bounded: the process is killed at the deadline below
        if f"churnwatch api on http://127.0.0.1:{port}/" in said:
            return process, f"http://127.0.0.1:{port}"
        if time.monotonic() > deadline:
            break
    process.kill()
    process.wait(timeout=10)
    msg = f"`{line}` did not say it serves within {READY_S} s"
    raise AssertionError(msg)


def test_the_at_risk_tour_runs_as_written(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """
    The at-risk section, after the short tour's `simulate`: load, the API and its pages, the
    list, the overview, the three kinds of feedback and the backtest of the exported verdicts.
    """
    env = _tour_env(tmp_path)
    simulate = next(line for line in _block_after("## A short tour") if "simulate" in line)
    _run(simulate, tmp_path, env)
    lines = _block_after("## The at-risk list, the web page and feedback")
    assert lines[0].startswith('eval "$(bash deploy/local/stack.sh up)"')
    assert lines[1] == "export CHURNWATCH_REDIS_URL=$CHURNWATCH_TEST_REDIS"
    env |= {"CHURNWATCH_REDIS_URL": redis_url, "CHURNWATCH_REDIS_PREFIX": redis_prefix}
    api: subprocess.Popen[str] | None = None
    try:
        for line in lines[2:]:
            if line.endswith("churnwatch api"):
                words = shlex.split(line)
                given = dict(w.split("=", 1) for w in words if "=" in w)
                api, url = _serve("churnwatch api", tmp_path, env | given)
                with urllib.request.urlopen(f"{url}/overview", timeout=30) as reply:
                    assert 200 == reply.status
                with urllib.request.urlopen(f"{url}/api/v1/overview", timeout=30) as reply:
                    assert orjson.loads(reply.read())["customers"] > 0
                continue
            if "ALERT_ID" in line:
                listed = _run("churnwatch at-risk --all --json --limit 50", tmp_path, env)
                items: list[dict[str, Any]] = orjson.loads(listed.stdout)["items"]
                alert_id = next(a["alert_id"] for i in items for a in i["open_alerts"])
                line = line.replace("ALERT_ID", alert_id)
            if "--customer" in line:
                line = _with_a_stored_alert(line, tmp_path, env)
            done = _run(line, tmp_path, env)
            if line.startswith("churnwatch overview"):
                assert "Alerts by week and rule" in done.stdout
            if line.startswith("churnwatch backtest"):
                assert "CSM verdicts" in done.stdout
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
    verdicts = (tmp_path / "verdicts.jsonl").read_bytes().splitlines()
    assert 2 == len(verdicts)


def _with_a_stored_alert(line: str, cwd: Path, env: dict[str, str]) -> str:
    """The line as written, once its customer is seen to have an open alert of its rule."""
    words = shlex.split(line)
    customer, rule = words[words.index("--customer") + 1], words[words.index("--rule") + 1]
    listed = _run("churnwatch at-risk --all --json --limit 10000", cwd, env)
    having = [
        item["customer_id"]
        for item in orjson.loads(listed.stdout)["items"]
        if any(a["rule"] == rule for a in item["open_alerts"])
    ]
    assert customer in having, f"`{line}`: {customer} has no open {rule!r} alert; {having[:5]} do"
    return line
