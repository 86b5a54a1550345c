"""
The web page at / in headless Chromium, against the real API and Redis (issue #7).

Uses the PyPI `playwright` package with Debian's chromium (`apt-get install chromium`);
`playwright install` is never needed. The `api_site` fixture (conftest.py) seeds Redis,
starts the API on a free loopback port and can write new alerts as the scoring worker does.
Every wait is a bounded playwright expectation (on the DOM or a response), never a sleep.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from needs import unavailable

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # reported by the `browser` fixture, which skips or fails
    sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The page polls this often (ms); the expectations below wait up to TIMEOUT_MS.
REFRESH_MS = 250
TIMEOUT_MS = 15_000
PAGE_SIZE = 50
HOW_TO_RUN = (
    "apt-get install -y chromium; .venv/bin/pip install playwright; "
    'eval "$(bash deploy/local/stack.sh up)"; .venv/bin/pytest -q tests/integration/test_web.py'
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """
    Debian's chromium, headless, driven by playwright's sync API.
    """
    if sync_playwright is None:
        unavailable("the playwright package is not installed", HOW_TO_RUN)
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} not found", HOW_TO_RUN)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """
    A fresh page in its own browser context, with bounded default timeouts.
    """
    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context()
    new_page = context.new_page()
    new_page.set_default_timeout(TIMEOUT_MS)
    try:
        yield new_page
    finally:
        context.close()


@pytest.fixture
def script_errors(page: Page) -> list[str]:
    """
    The page's uncaught script errors, collected from before the first navigation.
    """
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def page_url(site: Any, fragment: str = "#/", **query: int) -> str:
    """
    The page's URL with a short refresh interval, extra query parameters and a hash route.
    """
    params = "&".join(f"{name}={value}" for name, value in {"refresh": REFRESH_MS, **query}.items())
    return f"{site.url}/?{params}{fragment}"


def customer_path(customer_id: str) -> str:
    """
    The API path of one customer.
    """
    return f"/api/v1/customers/{quote(customer_id, safe='')}"


def mark_document(page: Page) -> None:
    """
    Puts a marker on the window that a reload would wipe out.
    """
    page.evaluate("window.__churnwatchNotReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    """
    Checks that the window marked by mark_document is still the same document.
    """
    assert "same document" == page.evaluate(
        "window.__churnwatchNotReloaded === true ? 'same document' : 'reloaded'"
    )


def stored_verdicts(site: Any, rule: str, verdict: str) -> float:
    """
    The store's count of verdicts for one rule, from the API's churnwatch_alert_verdicts gauge.
    """
    with urllib.request.urlopen(f"{site.url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    labels = (f'rule="{rule}"', f'verdict="{verdict}"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("churnwatch_alert_verdicts{") and all(lab in line for lab in labels)
    )


def test_page_lists_at_risk_opens_chart_and_reasons_and_shows_new_alerts(
    api_site: Any, page: Page, script_errors: list[str]
) -> None:
    """
    The page lists the seeded at-risk customers in order, a click opens a customer's chart
    and reasons, and a new alert appears without a reload.
    """
    expected = list(api_site.expected_action_order)[:PAGE_SIZE]
    assert expected, "the seeded store has no customer who needs action"
    page.goto(page_url(api_site))

    rows = page.get_by_test_id("at-risk-row")
    expect(rows.locator("th")).to_have_text(expected)
    assert expected == [row.get_attribute("data-customer-id") for row in rows.all()]
    mark_document(page)

    customer_id = expected[0]
    row = page.locator(f'[data-testid="at-risk-row"][data-customer-id="{customer_id}"]')
    open_alerts = row.get_by_test_id("open-alerts")
    listed = api_site.get_json(f"/api/v1/at-risk?limit={PAGE_SIZE}")["items"][0]
    assert customer_id == listed["customer_id"]
    expect(open_alerts).to_have_text(str(len(listed["open_alerts"])))
    # One unit everywhere: risk and its change as `churnwatch at-risk` and the summaries write
    # them (a probability with two decimals, the change signed).
    expect(row.get_by_test_id("risk")).to_have_text(f"{listed['churn_probability']:.2f}")
    items = api_site.get_json(f"/api/v1/at-risk?limit={PAGE_SIZE}")["items"]
    changed = [item for item in items if item["change"] is not None]
    assert changed, "no listed customer has a change to show"
    other = page.locator(
        f'[data-testid="at-risk-row"][data-customer-id="{changed[0]["customer_id"]}"]'
    )
    expect(other.get_by_test_id("change")).to_have_text(f"{changed[0]['change']:+.2f}")
    api_site.add_alert(customer_id)
    expect(open_alerts).to_have_text(str(len(listed["open_alerts"]) + 1))

    row.get_by_test_id("top-reason").click()
    view = page.get_by_test_id("customer-view")
    expect(view).to_be_visible()
    expect(page.get_by_test_id("list-view")).to_be_hidden()
    customer = api_site.get_json(customer_path(customer_id))
    expect(view.get_by_test_id("customer-heading")).to_contain_text(customer_id)
    reasons = view.get_by_test_id("reason")
    expect(reasons.get_by_test_id("reason-text")).to_have_text(
        [r["text"] for r in customer["reasons"]]
    )
    expect(reasons).to_have_count(len(customer["reasons"]))
    expect(view.get_by_test_id("summary")).to_have_text(customer["summary"])
    chart = view.get_by_test_id("score-chart")
    expect(chart).to_have_attribute("data-points", str(len(customer["history"])))
    points = chart.locator("polyline").get_attribute("points") or ""
    assert len(customer["history"]) == len(points.split())
    expect(view.get_by_test_id("alert")).to_have_count(len(customer["alerts"]))

    alert_id = api_site.add_alert(customer_id)
    new_alert = view.locator(f'[data-testid="alert"][data-alert-id="{alert_id}"]')
    expect(new_alert).to_be_visible()
    expect(new_alert.get_by_test_id("verdict")).to_have_text("none yet")
    alerts = api_site.get_json(customer_path(customer_id))["alerts"]
    expect(view.get_by_test_id("alert")).to_have_count(len(alerts))
    shown = [item.get_attribute("data-alert-id") for item in view.get_by_test_id("alert").all()]
    assert [a["alert_id"] for a in alerts] == shown
    # The id is shown (for `churnwatch feedback ALERT_ID VERDICT`), not only in an attribute.
    texts = [
        item.get_by_test_id("alert-id").inner_text() for item in view.get_by_test_id("alert").all()
    ]
    assert [a["alert_id"] for a in alerts] == texts
    assert_not_reloaded(page)
    assert [] == script_errors


def test_polls_with_the_same_json_leave_the_page_alone_and_keep_focus(
    api_site: Any, page: Page, script_errors: list[str]
) -> None:
    """
    Polls that bring the same JSON leave the DOM as it is, and a re-render keeps the focus.
    """
    customer_id = api_site.expected_order[0]
    old_id = api_site.add_alert(customer_id)
    path = customer_path(customer_id)
    page.goto(page_url(api_site, f"#/customer/{quote(customer_id, safe='')}"))
    old = page.locator(f'[data-testid="alert"][data-alert-id="{old_id}"]')
    expect(old).to_be_visible()
    old.evaluate("node => { node.dataset.untouched = 'yes' }")
    for _ in range(2):
        with page.expect_response(lambda reply: reply.url.endswith(path)):
            pass
    assert "yes" == old.get_attribute("data-untouched")

    old.get_by_test_id("feedback-saved").focus()
    count = page.get_by_test_id("alert").count()
    api_site.add_alert(customer_id)
    expect(page.get_by_test_id("alert")).to_have_count(count + 1)
    expect(page.locator("[data-untouched]")).to_have_count(0)
    focused = page.evaluate("document.activeElement.getAttribute('data-focus-key')")
    assert f"feedback:{old_id}:saved" == focused
    assert [] == script_errors


def test_a_verdict_given_through_the_page_is_stored_once(
    api_site: Any, page: Page, script_errors: list[str]
) -> None:
    """
    A verdict clicked on the page is stored once in the API and shown as stored.
    """
    customer_id = api_site.expected_order[0]
    alert_id = api_site.add_alert(customer_id)
    page.goto(page_url(api_site, f"#/customer/{quote(customer_id, safe='')}"))
    page.get_by_label("Your name for verdicts").fill("ana")
    item = page.locator(f'[data-testid="alert"][data-alert-id="{alert_id}"]')
    expect(item.get_by_test_id("verdict")).to_have_text("none yet")

    def is_feedback(response: Any) -> bool:
        return response.request.method == "POST" and response.url.endswith(
            f"/alerts/{quote(alert_id, safe='')}/feedback"
        )

    alerts = api_site.get_json(customer_path(customer_id))["alerts"]
    rule = next(a["rule"] for a in alerts if a["alert_id"] == alert_id)
    before = stored_verdicts(api_site, rule, "false_alarm")
    with page.expect_response(is_feedback) as first:
        item.get_by_test_id("feedback-false_alarm").click()
    contract_keys = ("alert_id", "verdict", "previous", "changed")
    answer = first.value.json()
    assert (alert_id, "false_alarm", None, True) == tuple(answer[key] for key in contract_keys)
    # "by ana" comes only from the store, through the refresh after the POST
    expect(item.get_by_test_id("verdict")).to_have_attribute("data-verdict", "false_alarm")
    expect(item.get_by_test_id("verdict-by")).to_contain_text("by ana")
    expect(item.get_by_test_id("feedback-false_alarm")).to_have_attribute("aria-pressed", "true")
    stored = [
        a
        for a in api_site.get_json(customer_path(customer_id))["alerts"]
        if a["alert_id"] == alert_id
    ]
    assert 1 == len(stored)
    assert ("false_alarm", "ana") == (stored[0]["verdict"]["verdict"], stored[0]["verdict"]["by"])

    with page.expect_response(is_feedback) as again:
        item.get_by_test_id("feedback-false_alarm").click()
    answer = again.value.json()
    assert (alert_id, "false_alarm", "false_alarm", False) == tuple(
        answer[key] for key in contract_keys
    )
    expect(page.get_by_test_id("status")).to_contain_text("nothing changed")
    stored_again = [
        a
        for a in api_site.get_json(customer_path(customer_id))["alerts"]
        if a["alert_id"] == alert_id
    ]
    assert stored == stored_again
    assert 1 == stored_verdicts(api_site, rule, "false_alarm") - before
    listed = api_site.get_json(f"/api/v1/at-risk?limit={PAGE_SIZE}")["items"]
    open_ids = {a["alert_id"] for row in listed for a in row["open_alerts"]}
    assert alert_id not in open_ids
    assert [] == script_errors


def test_filters_pages_and_errors_keep_the_user_informed(
    api_site: Any, page: Page, script_errors: list[str]
) -> None:
    """
    Segment, sort and paging follow the API, the back link keeps them, and API errors are shown.
    """
    expected = list(api_site.expected_order)
    assert len(expected) >= 3, "the seeded store needs three at-risk customers to page"
    page.goto(page_url(api_site, "#/?show=all", limit=2))
    rows = page.get_by_test_id("at-risk-row")
    expect(rows.locator("th")).to_have_text(expected[:2])
    expect(page.get_by_test_id("prev-page")).to_be_disabled()
    page.get_by_test_id("next-page").click()
    expect(rows.locator("th")).to_have_text(expected[2:4])
    page.get_by_test_id("prev-page").click()
    expect(rows.locator("th")).to_have_text(expected[:2])

    segments = api_site.get_json("/api/v1/at-risk?limit=1")["segments"]
    segment_filter = page.get_by_label("Segment")
    expect(segment_filter.locator("option")).to_have_text(["all", *segments])
    wanted = next(
        (
            s
            for s in segments
            if api_site.get_json(f"/api/v1/at-risk?show=all&segment={s}")["total"] >= 1
        ),
        None,
    )
    assert wanted is not None, "no segment has an at-risk customer"
    segment_filter.select_option(wanted)
    page.get_by_label("Sort by").select_option("change")
    by_change = api_site.get_json(f"/api/v1/at-risk?show=all&segment={wanted}&sort=change&limit=2")
    expect(page.get_by_test_id("table-caption")).to_contain_text(f"in segment {wanted}")
    expect(rows.locator("th")).to_have_text([i["customer_id"] for i in by_change["items"]])
    expect(rows.get_by_test_id("segment")).to_have_text([wanted] * len(by_change["items"]))

    rows.first.locator("a").click()
    expect(page.get_by_test_id("customer-view")).to_be_visible()
    page.get_by_test_id("back").click()
    expect(page.get_by_test_id("list-view")).to_be_visible()
    expect(segment_filter).to_have_value(wanted)
    expect(page.get_by_label("Sort by")).to_have_value("change")
    expect(rows.locator("th")).to_have_text([i["customer_id"] for i in by_change["items"]])

    error = page.get_by_test_id("error")
    expect(error).to_be_hidden()
    page.goto(page_url(api_site, "#/?show=all&segment=no-such-segment"))
    expect(error).to_be_visible()
    expect(error).to_contain_text("segment")
    segment_filter.select_option("")
    expect(error).to_be_hidden()
    expect(rows.locator("th")).to_have_text(expected[:PAGE_SIZE])

    page.goto(page_url(api_site, "#/customer/no-such-customer"))
    expect(error).to_be_visible()
    expect(error).to_contain_text("no-such-customer")
    assert [] == script_errors


def test_the_overview_shows_the_base_as_the_api_counts_it(
    api_site: Any, page: Page, script_errors: list[str]
) -> None:
    """
    /overview, reached from the list's header: its tiles, segment charts and alert rows say
    what GET /api/v1/overview says; the weeks selector asks the API for that many weeks; a
    verdict given meanwhile shows on the page at its next poll, without a reload. With
    CHURNWATCH_SCREENSHOT=path the page is also saved there (the README's picture).
    """
    page.goto(page_url(api_site))
    page.get_by_test_id("overview-link").click()
    expect(page).to_have_url(f"{api_site.url}/overview")
    data = api_site.get_json("/api/v1/overview")
    expect(page.get_by_test_id("as-of")).to_contain_text(data["as_of"])
    expect(page.get_by_test_id("tile-customers")).to_have_text(f"{data['customers']:,}")
    expect(page.get_by_test_id("tile-need-action")).to_have_text(
        f"{data['need_action']['customers']:,}"
    )
    expect(page.get_by_test_id("tile-churned")).to_have_text(f"{data['churned']['customers']:,}")
    expect(page.get_by_test_id("tile-saved")).to_have_text("0")
    segments = page.get_by_test_id("segment")
    expect(segments).to_have_count(len(data["segments"]))
    for i, s in enumerate(data["segments"]):
        expect(segments.nth(i)).to_contain_text(f"{s['segment']}: {s['customers']:,} customers")
        expect(segments.nth(i).locator("rect")).to_have_count(len(s["histogram"]))
    rows = page.get_by_test_id("alerts-row")
    expect(rows).to_have_count(sum(len(w["by_rule"]) for w in data["weekly"]))
    expect(page.get_by_test_id("trend").locator("circle")).to_have_count(data["weeks"])
    target = os.environ.get("CHURNWATCH_SCREENSHOT")
    if target:
        page.set_viewport_size({"width": 1200, "height": 900})
        page.screenshot(path=target)

    page.goto(f"{api_site.url}/overview?refresh={REFRESH_MS}")
    mark_document(page)
    page.get_by_test_id("weeks").select_option("4")
    four = api_site.get_json("/api/v1/overview?weeks=4")
    expect(page.get_by_test_id("as-of")).to_contain_text("last 4 weeks")
    expect(page.get_by_test_id("trend").locator("circle")).to_have_count(4)
    expect(rows).to_have_count(sum(len(w["by_rule"]) for w in four["weekly"]))
    assert "weeks=4" in page.url

    newest = max(api_site.loaded.alerts, key=lambda a: a.event_ts)
    path = f"/api/v1/alerts/{newest.alert_id}/feedback"
    assert 200 == api_site.request("POST", path, {"verdict": "saved", "by": "t"}).status
    saved = api_site.get_json("/api/v1/overview?weeks=4")["saved"]["customers"]
    assert 1 == saved
    expect(page.get_by_test_id("tile-saved")).to_have_text("1")
    newest_row = rows.and_(page.locator(f'[data-rule="{newest.rule}"]')).first
    expect(newest_row.get_by_test_id("saved")).to_have_text("1")
    assert_not_reloaded(page)
    assert [] == script_errors


def test_with_tokens_the_page_asks_for_one_and_a_read_token_cannot_judge(
    guarded_api_site: Any, page: Page, script_errors: list[str]
) -> None:
    """
    With tokens on, the page asks for one when the API answers 401; with the read token it
    lists the customers and the overview, and a verdict is refused with the API's 403 in
    words; a wrong token is asked for again. A `by` holding HTML with a script and an
    onerror handler, stored with the write token, is shown as text and never runs.
    """
    site = guarded_api_site
    customer_id = site.expected_order[0]
    alert_id = site.add_alert(customer_id)
    site.token = site.tokens["write"]
    script = "<img src=x onerror=window.__cwPwned=1><script>window.__cwPwned=2</script>"[:64]
    reply = site.request(
        "POST", f"/api/v1/alerts/{alert_id}/feedback", {"verdict": "useful", "by": script}
    )
    assert 200 == reply.status, reply.body
    page.goto(page_url(site))
    form = page.get_by_test_id("token-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("error")).to_contain_text("401")
    page.get_by_test_id("token").fill("not-the-token")
    form.get_by_role("button").click()
    expect(form).to_be_visible()  # refused: asked again
    page.get_by_test_id("token").fill(site.tokens["read"])
    form.get_by_role("button").click()
    expect(form).to_be_hidden()
    rows = page.get_by_test_id("at-risk-row")
    expect(rows.first).to_be_visible()
    expect(page.get_by_test_id("error")).to_be_hidden()

    page.goto(page_url(site, f"#/customer/{quote(customer_id, safe='')}"))
    item = page.locator(f'[data-testid="alert"][data-alert-id="{alert_id}"]')
    expect(item.get_by_test_id("verdict-by")).to_contain_text(f"by {script}")
    item.get_by_test_id("feedback-lost").click()
    # the status line keeps it (the error banner goes at the next poll that succeeds)
    expect(page.get_by_test_id("status")).to_contain_text("may read, not give verdicts")
    site.token = site.tokens["read"]
    stored = site.get_json(f"/api/v1/alerts/{alert_id}")["verdict"]
    assert "useful" == stored["verdict"]

    page.goto(f"{site.url}/overview?refresh={REFRESH_MS}")  # the token stays with the tab
    expect(page.get_by_test_id("tile-customers")).to_have_text(
        f"{site.get_json('/api/v1/overview')['customers']:,}"
    )
    assert page.evaluate("window.__cwPwned === undefined")
    assert [] == script_errors
