"""
The at-risk API over real HTTP on loopback, reading a real Redis seeded from a replay (the
`api_site` fixture): the list in order and paged, 4xx naming bad parameters, one customer's
history and reasons, verdicts stored once per alert and counted in /metrics, the CLI's
`feedback` and `at-risk`, and the backtest's false-alarm rate from exported verdicts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from churnwatch.core.feedback import parse_verdicts, rule_feedback
from churnwatch.sim.simulator import SimConfig, Simulation
from needs import free_port, require_binaries

PAGE = 7


def test_at_risk_list_is_in_order_and_paginates(api_site: Any) -> None:
    """
    Pages of the at-risk list, walked with next_offset, give every seeded customer still at
    risk once, highest churn probability first, in the order computed from the states.
    """
    expected = api_site.expected_order
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = api_site.get_json(f"/api/v1/at-risk?show=all&limit={PAGE}&offset={offset}")
        assert PAGE >= len(page["items"])
        assert len(expected) == page["total"]
        seen += [item["customer_id"] for item in page["items"]]
        offset = page["next_offset"]
    assert expected == seen
    first = api_site.get_json("/api/v1/at-risk?show=all&limit=3")["items"][0]
    assert first["churn_probability"] > 0
    assert first["top_reasons"], first
    assert {"factor", "contribution", "text"} == set(first["top_reasons"][0])


def test_at_risk_filters_by_segment_and_sorts_by_change(api_site: Any) -> None:
    """
    A segment filter lists only that segment's customers, in score order; sort=change orders
    by the change since the anchor.
    """
    states = api_site.states()
    segment = states[api_site.expected_order[0]].segment
    page = api_site.get_json(f"/api/v1/at-risk?show=all&segment={segment}&limit=500")
    wanted = [cid for cid in api_site.expected_order if states[cid].segment == segment]
    assert wanted == [item["customer_id"] for item in page["items"]]
    changes = api_site.get_json("/api/v1/at-risk?show=all&sort=change&limit=500")["items"]
    values = [item["change"] for item in changes]
    assert values == sorted(values, reverse=True)
    assert all(v is not None for v in values)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("sort=name", "sort"),
        ("segment=nobody", "segment"),
        ("colour=red", "colour"),
    ],
)
def test_bad_parameters_get_a_400_naming_them(api_site: Any, query: str, parameter: str) -> None:
    """
    A bad query parameter of the at-risk list is a 400 whose JSON names the parameter.
    """
    reply = api_site.request("GET", f"/api/v1/at-risk?{query}")
    assert 400 == reply.status
    assert parameter == reply.body["parameter"]
    assert parameter in reply.body["error"]


def test_customer_has_history_features_reasons_and_alerts(api_site: Any) -> None:
    """
    One customer's view: its score history oldest first, ending at its current score, the
    features, reasons and its alerts newest first; an unknown customer is a 404.
    """
    assert api_site.loaded.alerts, "the seeded history should have alerts"
    alerted = api_site.loaded.alerts[-1].customer_id
    view = api_site.get_json(f"/api/v1/customers/{alerted}")
    history = view["history"]
    assert history
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    assert view["churn_probability"] == history[-1]["churn_probability"]
    assert view["features"]["days_since_event"] >= 0
    assert view["summary"].startswith("risk")
    fired = sorted(
        (a for a in api_site.loaded.alerts if a.customer_id == alerted),
        key=lambda a: a.event_ts,
        reverse=True,
    )
    assert [a.alert_id for a in fired] == [a["alert_id"] for a in view["alerts"]]
    assert all(a["verdict"] is None for a in view["alerts"])
    missing = api_site.request("GET", "/api/v1/customers/nobody")
    assert 404 == missing.status
    assert "customer_id" == missing.body["parameter"]


def _verdict_lines(metrics: str) -> dict[tuple[str, str], float]:
    found = {}
    for line in metrics.splitlines():
        if line.startswith("churnwatch_alert_verdicts{"):
            labels, value = line.rsplit(" ", 1)
            parts = dict(p.split("=", 1) for p in labels[labels.index("{") + 1 : -1].split(","))
            found[(parts["rule"].strip('"'), parts["verdict"].strip('"'))] = float(value)
    return found


def test_a_verdict_is_stored_once_per_alert_and_counted(api_site: Any) -> None:
    """
    A verdict posted twice is stored once (the second changes nothing), a different one
    replaces it, /metrics counts each alert once under its current verdict, and bad verdicts
    or unknown alerts get a 4xx naming the field.
    """
    alert = api_site.loaded.alerts[0]
    path = f"/api/v1/alerts/{alert.alert_id}/feedback"
    first = api_site.request("POST", path, {"verdict": "useful", "by": "ana"})
    again = api_site.request("POST", path, {"verdict": "useful", "by": "ana"})
    assert (200, True, None) == (first.status, first.body["changed"], first.body["previous"])
    assert (200, False) == (again.status, again.body["changed"])
    counts = _verdict_lines(api_site.request("GET", "/metrics").body)
    assert 1.0 == counts[(alert.rule, "useful")]
    changed = api_site.request("POST", path, {"verdict": "false_alarm"})
    assert "useful" == changed.body["previous"]
    counts = _verdict_lines(api_site.request("GET", "/metrics").body)
    assert 0.0 == counts[(alert.rule, "useful")]
    assert 1.0 == counts[(alert.rule, "false_alarm")]
    view = api_site.get_json(f"/api/v1/customers/{alert.customer_id}")
    [shown] = [a for a in view["alerts"] if a["alert_id"] == alert.alert_id]
    assert "false_alarm" == shown["verdict"]["verdict"]
    bad = api_site.request("POST", path, {"verdict": "meh"})
    assert (400, "verdict") == (bad.status, bad.body["parameter"])
    unknown = api_site.request("POST", "/api/v1/alerts/nope/feedback", {"verdict": "lost"})
    assert (404, "alert_id") == (unknown.status, unknown.body["parameter"])
    extra = api_site.request("POST", path, {"verdict": "lost", "colour": "red"})
    assert (400, "colour") == (extra.status, extra.body["parameter"])


def test_health_openapi_and_page_are_served(api_site: Any) -> None:
    """
    /healthz says ok with Redis up, /openapi.json describes the routes, / serves the page.
    """
    assert "ok" == api_site.get_json("/healthz")["status"]
    spec = api_site.get_json("/openapi.json")
    assert "/api/v1/at-risk" in spec["paths"]
    assert "/api/v1/alerts/{alert_id}/feedback" in spec["paths"]
    page = api_site.request("GET", "/")
    assert 200 == page.status
    assert "<html" in page.body.lower()


def _cli(api_site: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CHURNWATCH_REDIS_URL": api_site.redis_url,
        "CHURNWATCH_REDIS_PREFIX": api_site.prefix,
        "CHURNWATCH_KAFKA_PARTITIONS": "3",
    }
    command = [sys.executable, "-m", "churnwatch.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_cli_feedback_and_at_risk_and_backtest_false_alarm_rate(
    api_site: Any, tmp_path: Path
) -> None:
    """
    `churnwatch feedback ALERT_ID VERDICT` stores a verdict once (a repeat says so), the API
    and /metrics show it, `at-risk --json` lists the API's order, and the verdicts exported with
    `feedback --export` give the backtest's false-alarm rate per rule.
    """
    alerts = api_site.loaded.alerts
    first, second = alerts[0], alerts[1]
    done = _cli(api_site, "feedback", first.alert_id, "false_alarm", "--by", "bo")
    assert 0 == done.returncode, done.stderr
    repeat = _cli(api_site, "feedback", first.alert_id, "false_alarm")
    assert "stored once" in repeat.stdout
    assert 0 == _cli(api_site, "feedback", second.alert_id, "useful").returncode
    bad = _cli(api_site, "feedback", second.alert_id, "meh")
    assert 0 != bad.returncode
    assert "verdict" in bad.stderr
    shown = api_site.get_json(f"/api/v1/alerts/{first.alert_id}")
    assert "false_alarm" == shown["verdict"]["verdict"]
    counts = _verdict_lines(api_site.request("GET", "/metrics").body)
    assert 1.0 == counts[(second.rule, "useful")]
    assert 1.0 == counts[(first.rule, "false_alarm")]
    listed = _cli(api_site, "at-risk", "--all", "--json", "--limit", "5")
    assert 0 == listed.returncode, listed.stderr
    order = [item["customer_id"] for item in orjson.loads(listed.stdout)["items"]]
    assert api_site.expected_order[:5] == order
    export = tmp_path / "verdicts.jsonl"
    assert 0 == _cli(api_site, "feedback", "--export", str(export)).returncode
    verdicts = parse_verdicts(export.read_bytes().splitlines(), source=str(export))
    assert {first.alert_id: "false_alarm", second.alert_id: "useful"} == {
        k: v.verdict for k, v in verdicts.items()
    }
    history = tmp_path / "events.jsonl"
    sim = Simulation(SimConfig(api_site.customers, api_site.days, seed=api_site.seed))
    history.write_bytes(b"".join(r + b"\n" for r in sim.records()))
    report = tmp_path / "report"
    ran = _cli(
        api_site,
        *("backtest", "--events", str(history), "--verdicts", str(export)),
        *("--partitions", "3", "--no-sweep", "--quiet", "--report", str(report)),
    )
    assert 0 == ran.returncode, ran.stderr
    assert "CSM verdicts" in ran.stdout
    feedback = orjson.loads((report / "metrics.json").read_bytes())["feedback"]
    assert 0 == feedback["verdicts_matching_no_alert"]
    entries, unmatched = rule_feedback(alerts, verdicts)
    assert 0 == unmatched
    assert [e.to_dict() for e in entries] == feedback["rules"]
    by_rule = {e["rule"]: e for e in feedback["rules"]}
    assert 2 == sum(e["judged"] for e in feedback["rules"])
    if first.rule == second.rule:
        assert 0.5 == by_rule[first.rule]["false_alarm_rate"]
    else:
        assert 1.0 == by_rule[first.rule]["false_alarm_rate"]
        assert 0.0 == by_rule[second.rule]["false_alarm_rate"]


def test_redis_going_away_gives_503_and_unhealthy(tmp_path: Path) -> None:
    """
    When its Redis stops, the API answers 503 with a JSON error and /healthz says unavailable;
    the web page itself is still served.
    """
    from api_support import ApiSite

    require_binaries("redis-server")
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    site = None
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        site = ApiSite(f"redis://127.0.0.1:{port}/0", "cw-down", customers=20, days=30)
        site.start()
        assert 200 == site.request("GET", "/api/v1/at-risk").status
        server.terminate()
        server.wait(timeout=10)
        down = site.request("GET", "/api/v1/at-risk")
        assert 503 == down.status
        assert "Redis" in down.body["error"]
        assert 503 == site.request("GET", "/healthz").status
        assert 200 == site.request("GET", "/").status
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        if site is not None and site.server is not None:
            site.call(site.server.stop())
            site.loop.call_soon_threadsafe(site.loop.stop)


def test_alert_ids_are_listed_and_a_verdict_can_name_customer_and_rule(api_site: Any) -> None:
    """
    `at-risk --alerts` shows the ids of each listed customer's open alerts (the ones
    `feedback ALERT_ID VERDICT` takes); `feedback --customer C --rule R VERDICT` gives the
    verdict to the customer's newest alert of that rule, and a rule it has no alert of is a
    one-line error naming the rules it has. (Last in the file: the verdicts it gives would
    count in the export test above.)
    """
    customer_id = api_site.expected_order[0]
    older = api_site.add_alert(customer_id, rule="probe_rule")
    newer = api_site.add_alert(customer_id, rule="probe_rule")
    listed = _cli(api_site, "at-risk", "--all", "--alerts", "--limit", "3")
    assert 0 == listed.returncode, listed.stderr
    assert f"probe_rule: {newer}" in listed.stdout
    assert f"probe_rule: {older}" in listed.stdout
    given = _cli(api_site, "feedback", "--customer", customer_id, "--rule", "probe_rule", "saved")
    assert 0 == given.returncode, given.stderr
    assert f"{newer}: saved" in given.stdout
    assert "saved" == api_site.get_json(f"/api/v1/alerts/{newer}")["verdict"]["verdict"]
    assert api_site.get_json(f"/api/v1/alerts/{older}")["verdict"] is None
    relisted = _cli(api_site, "at-risk", "--all", "--alerts", "--limit", "3")
    assert newer not in relisted.stdout  # judged: no longer open
    assert older in relisted.stdout
    wrong = _cli(api_site, "feedback", "--customer", customer_id, "--rule", "nope", "saved")
    assert 2 == wrong.returncode
    assert "has no 'nope' alert" in wrong.stderr
    assert "probe_rule" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    half = _cli(api_site, "feedback", "--customer", customer_id, "saved")
    assert 2 == half.returncode
    assert "--customer and --rule go together" in half.stderr


def test_the_list_holds_who_needs_action_and_says_so(api_site: Any) -> None:
    """
    By default the at-risk list holds the customers who need action (an engagement score below
    their segment's threshold, or an alert without a verdict), in score order, computed here
    from the states, the rules and the alerts; it says so in words and counts the others. A
    customer whose only reason to be listed was an open alert leaves the list with its
    verdict. show=all lists everyone.
    """
    expected = api_site.expected_action_order
    everyone = api_site.expected_order
    page = api_site.get_json("/api/v1/at-risk?limit=500")
    assert "action" == page["show"]
    assert expected == [item["customer_id"] for item in page["items"]]
    assert (len(expected), len(everyone) - len(expected)) == (page["total"], page["others"])
    assert "below their segment's threshold" in page["definition"]
    assert "an alert without a verdict" in page["definition"]
    assert 0 < len(expected) < len(everyone), "the seeded store should list some, not all"
    # A customer who needs no action gets an alert: listed; its verdict: not listed again.
    quiet = next(cid for cid in reversed(everyone) if cid not in expected)
    alert_id = api_site.add_alert(quiet, rule="probe_open")
    listed = [i["customer_id"] for i in api_site.get_json("/api/v1/at-risk?limit=500")["items"]]
    assert quiet in listed
    assert listed == api_site.expected_action_order
    reply = api_site.request(
        "POST", f"/api/v1/alerts/{alert_id}/feedback", {"verdict": "useful", "by": "t"}
    )
    assert 200 == reply.status, reply.body
    listed = [i["customer_id"] for i in api_site.get_json("/api/v1/at-risk?limit=500")["items"]]
    assert quiet not in listed
    everyone_page = api_site.get_json("/api/v1/at-risk?show=all&limit=500")
    assert everyone == [item["customer_id"] for item in everyone_page["items"]]
    assert (0, "all") == (everyone_page["others"], everyone_page["show"])
    shown = _cli(api_site, "at-risk", "--limit", "3")
    assert 0 == shown.returncode, shown.stderr
    assert "Listed: customers who need action" in shown.stdout
    assert f"({len(everyone) - len(expected)} others need no action" in shown.stdout
    bad = api_site.request("GET", "/api/v1/at-risk?show=some")
    assert (400, "show") == (bad.status, bad.body["parameter"])


def test_the_overview_sums_the_stored_base_and_follows_verdicts(api_site: Any) -> None:
    """
    GET /api/v1/overview over the seeded store: as of the newest scoring, every customer
    counted once by segment and risk bin, the cancelled ones as churned, every stored alert in
    its week under its rule (computed here from the states and the replay's alerts, not from
    the API's sets). A `saved` verdict moves a customer into saved with its revenue and shows
    in its alert's week at once (the cache is dropped); a `lost` one into churned. Bad weeks
    and unknown parameters get a 400 naming them, `churnwatch overview --json` gives the same
    report and its tables say what they count, and /overview serves the page.
    """
    from collections import Counter

    from churnwatch.api.overview import facts_of

    states = api_site.states()
    loaded = api_site.loaded
    report = api_site.get_json("/api/v1/overview?weeks=104")
    newest = max(s.scored_at for s in states.values() if s.scored_at is not None)
    assert newest.strftime("%Y-%m-%dT%H:%M:%S") == report["as_of"][:19]
    assert (len(states), 104) == (report["customers"], len(report["weekly"]))
    active = [s for s in states.values() if s.cancelled_at is None]
    assert len(active) == report["at_risk"] == sum(r["customers"] for r in report["segments"])
    scored = sum(s.churn_probability is not None for s in active)
    assert scored == sum(sum(r["histogram"]) for r in report["segments"])
    cancelled = sum(s.cancelled_at is not None for s in states.values())
    assert 0 < cancelled == report["churned"]["cancelled"] == report["churned"]["customers"]
    assert 0 == report["saved"]["customers"]
    kept = api_site.settings.redis.alerts_kept
    per_customer = Counter(a.customer_id for a in loaded.alerts)
    assert sum(min(n, kept) for n in per_customer.values()) == sum(
        w["alerts"] for w in report["weekly"]
    )
    by_rule: Counter[str] = Counter()
    for week in report["weekly"]:
        for rule, mix in week["by_rule"].items():
            by_rule[rule] += mix["alerts"]
            assert mix["alerts"] == mix["open"]  # no verdict yet
    assert Counter(a.rule for a in loaded.alerts) == by_rule
    assert report["need_action"]["customers"] == len(api_site.expected_action_order)

    alive = [a for a in loaded.alerts if states[a.customer_id].cancelled_at is None]
    kept_alert, lost_alert = (
        alive[-1],
        next(a for a in alive if a.customer_id != alive[-1].customer_id),
    )
    for alert, verdict in ((kept_alert, "saved"), (lost_alert, "lost")):
        path = f"/api/v1/alerts/{alert.alert_id}/feedback"
        assert 200 == api_site.request("POST", path, {"verdict": verdict}).status
    after = api_site.get_json("/api/v1/overview?weeks=104")
    revenue = facts_of(states[kept_alert.customer_id]).revenue
    assert {"customers": 1, "revenue": round(revenue, 2)} == after["saved"]
    assert (cancelled + 1, 1) == (after["churned"]["customers"], after["churned"]["judged_lost"])
    [week] = [
        w
        for w in after["weekly"]
        if w["week_start"] < kept_alert.event_ts.strftime("%Y-%m-%dT%H:%M:%S") <= w["week_end"]
    ]
    assert 1 <= week["by_rule"][kept_alert.rule].get("saved", 0)

    for query, parameter in (
        ("weeks=0", "weeks"),
        ("weeks=105", "weeks"),
        ("weeks=x", "weeks"),
        ("colour=red", "colour"),
    ):
        bad = api_site.request("GET", f"/api/v1/overview?{query}")
        assert (400, parameter) == (bad.status, bad.body["parameter"]), query
    assert "/api/v1/overview" in api_site.get_json("/openapi.json")["paths"]
    page = api_site.request("GET", "/overview")
    assert 200 == page.status
    assert "overview.js" in page.body

    shown = _cli(api_site, "overview", "--json", "--weeks", "104")
    assert 0 == shown.returncode, shown.stderr
    assert after == orjson.loads(shown.stdout)
    tables = _cli(api_site, "overview", "--weeks", "8")
    assert 0 == tables.returncode, tables.stderr
    for title in ("The base", "Risk by segment", "By week", "Alerts by week and rule"):
        assert title in tables.stdout
    weekly_rows = [
        line for line in tables.stdout.splitlines() if line.count("│") == 7 and "│ 20" in line
    ]
    assert [w["week_end"][:10] for w in after["weekly"][-8:]] == [
        line.split("│")[1].strip() for line in weekly_rows
    ]
    wrong = _cli(api_site, "overview", "--weeks", "0")
    assert 2 == wrong.returncode
    assert "weeks" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_tokens_guard_every_api_route_but_health_metrics_and_the_page(
    guarded_api_site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """
    With tokens on: every /api/ route answers 401 (naming `authorization`, with a Bearer
    challenge) without a token or with a wrong one; the read token reads and gets 403 on a
    verdict; the write token reads and gives verdicts; /healthz, /metrics, /openapi.json and
    the page need none; no token is ever logged.
    """
    site = guarded_api_site
    alert = site.loaded.alerts[0]
    feedback = f"/api/v1/alerts/{alert.alert_id}/feedback"
    reads = [
        "/api/v1/at-risk",
        f"/api/v1/customers/{alert.customer_id}",
        f"/api/v1/alerts/{alert.alert_id}",
        "/api/v1/overview",
    ]
    for token in (None, "nope", site.tokens["read"] + "x", ""):
        site.token = token
        for path in reads:
            reply = site.request("GET", path)
            assert (401, "authorization") == (reply.status, reply.body["parameter"]), path
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert 401 == site.request("POST", feedback, {"verdict": "useful"}).status
    for path in ("/healthz", "/metrics", "/openapi.json", "/", "/overview", "/static/auth.js"):
        assert 200 == site.request("GET", path).status, path
    spec = site.request("GET", "/openapi.json").body
    assert "bearer" == spec["components"]["securitySchemes"]["bearer"]["scheme"]
    for path, item in spec["paths"].items():
        for operation in item.values():
            assert (path.startswith("/api/")) == ("security" in operation), path
    site.token = site.tokens["read"]
    for path in reads:
        assert 200 == site.request("GET", path).status, path
    refused = site.request("POST", feedback, {"verdict": "useful"})
    assert (403, "authorization") == (refused.status, refused.body["parameter"])
    assert "may read, not give verdicts" in refused.body["error"]
    assert site.get_json(f"/api/v1/alerts/{alert.alert_id}")["verdict"] is None
    site.token = site.tokens["write"]
    assert 200 == site.request("GET", "/api/v1/at-risk").status
    given = site.request("POST", feedback, {"verdict": "useful"})
    assert (200, True) == (given.status, given.body["changed"])
    for secret in site.tokens.values():
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({}, "the API needs its tokens: set CHURNWATCH_API_READ_TOKEN"),
        (
            {"CHURNWATCH_API_AUTH": "off", "CHURNWATCH_API_HOST": "0.0.0.0"},
            "only for a loopback host",
        ),
        (
            {"CHURNWATCH_API_READ_TOKEN": "same", "CHURNWATCH_API_WRITE_TOKEN": "same"},
            "different from each other",
        ),
        (
            {"CHURNWATCH_API_AUTH": "maybe"},
            "CHURNWATCH_API_AUTH: Input should be 'tokens' or 'off'",
        ),
    ],
)
def test_churnwatch_api_refuses_to_serve_unguarded(env: dict[str, str], said: str) -> None:
    """
    `churnwatch api` without tokens, with auth off on a non-loopback host, or with one token
    for both is a one-line error (exit code 2; 1 for a value the settings reject, as for every
    setting) before it connects to anything.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_")}
    ran = subprocess.run(
        [sys.executable, "-m", "churnwatch.cli", "api", "--port", str(free_port())],
        env={**base, "CHURNWATCH_REDIS_URL": "redis://127.0.0.1:1/0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (1 if "maybe" in env.values() else 2) == ran.returncode, ran.stderr
    assert said in ran.stderr
    assert "Traceback" not in ran.stderr
    assert 1 == len(ran.stderr.strip().splitlines())
    assert "same" not in ran.stderr  # a token is never repeated back
