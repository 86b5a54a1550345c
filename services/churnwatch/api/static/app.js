// churnwatch's page for customer-success teams: the at-risk list (#/) and one customer
// (#/customer/<id>). Plain ES2020, no build step. Each view polls its endpoint every
// `?refresh=` ms (default 5000) and re-renders only when the JSON text changed, so a
// user's focus and scroll survive the polling. `?limit=` sets the page size (default 50).
// Data from the API is written with textContent only, never as HTML.

import { askForToken, authHeaders, forgetToken } from "./auth.js";
import { h, svg } from "./dom.js";

const API = "/api/v1";
const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 500;
const DEFAULT_REFRESH_MS = 5000;
const MIN_REFRESH_MS = 100;
const VERDICTS = [
  ["useful", "useful"],
  ["false_alarm", "false alarm"],
  ["saved", "saved"],
  ["lost", "lost"],
];
const VERDICT_LABELS = new Map(VERDICTS);

const PAGE_QUERY = new URLSearchParams(window.location.search);
const REFRESH_MS = readRefresh(PAGE_QUERY.get("refresh"));
const PAGE_SIZE = readPageSize(PAGE_QUERY.get("limit"));

const el = {
  error: document.getElementById("error"),
  listView: document.getElementById("list-view"),
  listControls: document.getElementById("list-controls"),
  segment: document.getElementById("segment"),
  sort: document.getElementById("sort"),
  caption: document.getElementById("table-caption"),
  show: document.getElementById("show"),
  definition: document.getElementById("definition"),
  rows: document.getElementById("at-risk-body"),
  prev: document.getElementById("prev"),
  next: document.getElementById("next"),
  pageInfo: document.getElementById("page-info"),
  customerView: document.getElementById("customer-view"),
  back: document.getElementById("back"),
  heading: document.getElementById("customer-heading"),
  reviewer: document.getElementById("reviewer"),
  status: document.getElementById("status"),
  customerBody: document.getElementById("customer-body"),
};

// ---------------------------------------------------------------------------------------
// small helpers

function readRefresh(raw) {
  const ms = Number(raw);
  if (raw === null || raw === "" || !Number.isFinite(ms)) return DEFAULT_REFRESH_MS;
  return Math.max(MIN_REFRESH_MS, ms);
}

function readPageSize(raw) {
  const size = Number.parseInt(raw || "", 10);
  if (!Number.isFinite(size) || size < 1) return DEFAULT_PAGE_SIZE;
  return Math.min(MAX_PAGE_SIZE, size);
}

const percent = (p) => (typeof p === "number" ? `${Math.round(p * 100)}%` : "—");
// Risk as the CLI, the alerts' summaries and the emails write it: a probability, two decimals.
const risk = (p) => (typeof p === "number" ? p.toFixed(2) : "—");
const score = (s) => (typeof s === "number" ? s.toFixed(0) : "—");

/** A change in probability, signed, two decimals, as the CLI and the summaries: 0.18 -> "+0.18". */
function changeText(change) {
  if (typeof change !== "number") return "—";
  return `${change < 0 ? "-" : "+"}${Math.abs(change).toFixed(2)}`;
}

const changeClass = (change) =>
  typeof change !== "number" || Math.round(change * 100) === 0
    ? "flat"
    : change > 0
      ? "rise"
      : "fall";

function formatTime(iso) {
  const at = new Date(iso);
  if (!iso || Number.isNaN(at.getTime())) return iso || "—";
  return `${at.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

const timeEl = (iso) => h("time", { datetime: iso }, formatTime(iso));

const verdictLabel = (verdict) => VERDICT_LABELS.get(verdict) || verdict;

function showError(message) {
  const text = message || "";
  if (el.error.textContent === text && el.error.hidden === !text) return;
  el.error.textContent = text;
  el.error.hidden = !text;
}

/** "The API answered 400: unknown segment 'x' (parameter: segment)". */
function describeError(response, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  const what =
    body && typeof body.error === "string"
      ? body.error
      : text.trim().slice(0, 200) || response.statusText;
  const parameter = body && body.parameter ? ` (parameter: ${body.parameter})` : "";
  return `The API answered ${response.status}: ${what}${parameter}`;
}

async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, {
      ...options,
      headers: { Accept: "application/json", ...authHeaders(), ...options.headers },
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`Could not reach the API at ${url}: ${err.message}`);
  }
  const text = await response.text();
  if (response.status === 401) {
    // No token, or one the API refused: ask for one, and poll again once it is given.
    forgetToken();
    askForToken("This API asks for a token (the read token, or the write token to give verdicts).", restart);
  }
  if (!response.ok) throw new Error(describeError(response, text));
  return text;
}

/** Runs render() and gives focus back to the element with the same data-focus-key. */
function keepingFocus(render) {
  const key = document.activeElement && document.activeElement.getAttribute("data-focus-key");
  render();
  if (!key) return;
  const again = [...document.querySelectorAll("[data-focus-key]")].find(
    (node) => node.getAttribute("data-focus-key") === key,
  );
  if (again && again !== document.activeElement) again.focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------------
// polling: one endpoint at a time, the next request only after the last one answered

const poller = { generation: 0, timer: null, controller: null, view: null };
// The JSON text each view's DOM shows now, and the URL it came from.
const shown = { list: { url: null, text: null }, customer: { url: null, text: null } };

function watch(view, url, render, onFail) {
  poller.view = { name: view, url, render, onFail };
  if (shown[view].url !== url) shown[view] = { url, text: null };
  restart();
}

function restart() {
  clearTimeout(poller.timer);
  if (poller.controller) poller.controller.abort();
  poller.generation += 1;
  tick(poller.generation);
}

async function tick(generation) {
  const view = poller.view;
  const controller = new AbortController();
  poller.controller = controller;
  try {
    const text = await request(view.url, { signal: controller.signal });
    if (generation !== poller.generation) return;
    showError(null);
    const current = shown[view.name];
    if (current.url !== view.url || current.text !== text) {
      const data = JSON.parse(text);
      keepingFocus(() => view.render(data));
      shown[view.name] = { url: view.url, text };
    }
  } catch (err) {
    if (generation !== poller.generation || err.name === "AbortError") return;
    showError(err.message);
    if (shown[view.name].text === null && view.onFail) view.onFail();
  }
  if (generation === poller.generation) {
    poller.timer = setTimeout(() => tick(generation), REFRESH_MS);
  }
}

// ---------------------------------------------------------------------------------------
// routes: #/?segment=smb&sort=change&offset=50 and #/customer/<id>

let listRoute = { segment: "", sort: "score", offset: 0 };
let listData = null;
let currentView = null;

function parseRoute() {
  const hash = window.location.hash.replace(/^#/, "");
  const customer = hash.match(/^\/customer\/(.+)$/);
  if (customer) {
    let id = customer[1];
    try {
      id = decodeURIComponent(id);
    } catch {
      // a malformed escape: use the text as it is; the API will say if it is unknown
    }
    return { view: "customer", id };
  }
  const query = new URLSearchParams(hash.split("?")[1] || "");
  return {
    view: "list",
    segment: query.get("segment") || "",
    sort: query.get("sort") === "change" ? "change" : "score",
    offset: Math.max(0, Number.parseInt(query.get("offset") || "0", 10) || 0),
    show: query.get("show") === "all" ? "all" : "action",
  };
}

function listHash({ segment, sort, offset, show }) {
  const query = new URLSearchParams();
  if (show === "all") query.set("show", "all");
  if (segment) query.set("segment", segment);
  if (sort && sort !== "score") query.set("sort", sort);
  if (offset) query.set("offset", String(offset));
  const text = query.toString();
  return text ? `#/?${text}` : "#/";
}

const customerHash = (id) => `#/customer/${encodeURIComponent(id)}`;

function route() {
  const next = parseRoute();
  const previous = currentView;
  currentView = next;
  if (next.view === "customer") {
    showCustomer(next.id, previous);
  } else {
    showList(next, previous);
  }
}

// ---------------------------------------------------------------------------------------
// the at-risk list

function showList(routeNow, previous) {
  listRoute = {
    segment: routeNow.segment,
    sort: routeNow.sort,
    offset: routeNow.offset,
    show: routeNow.show,
  };
  el.customerView.hidden = true;
  el.listView.hidden = false;
  el.status.textContent = "";
  document.title = "churnwatch: customers at risk";
  el.sort.value = listRoute.sort;
  el.show.value = listRoute.show;
  selectSegment(listRoute.segment);

  const query = new URLSearchParams({
    sort: listRoute.sort,
    limit: String(PAGE_SIZE),
    offset: String(listRoute.offset),
    show: listRoute.show,
  });
  if (listRoute.segment) query.set("segment", listRoute.segment);
  const url = `${API}/at-risk?${query}`;
  if (shown.list.url !== url) {
    el.caption.textContent = "Loading…";
    el.rows.replaceChildren();
    el.pageInfo.textContent = "";
    el.prev.disabled = true;
    el.next.disabled = true;
  }
  watch("list", url, renderList, () => {
    el.caption.textContent = "The list could not be loaded (see the message above).";
  });

  if (previous && previous.view === "customer") {
    // Back from a customer: put focus on the row we came from, or on the heading.
    const link = el.rows.querySelector(`[data-focus-key="${CSS.escape(`row:${previous.id}`)}"]`);
    (link || document.getElementById("list-heading")).focus();
  }
}

function selectSegment(segment) {
  if (segment && ![...el.segment.options].some((option) => option.value === segment)) {
    el.segment.append(h("option", { value: segment }, segment));
  }
  el.segment.value = segment;
}

function fillSegments(segments) {
  const wanted = ["", ...segments];
  const have = [...el.segment.options].map((option) => option.value);
  if (wanted.join("\n") !== have.join("\n")) {
    el.segment.replaceChildren(
      ...wanted.map((value) => h("option", { value }, value === "" ? "all" : value)),
    );
  }
  selectSegment(listRoute.segment);
}

function renderList(data) {
  listData = data;
  fillSegments(Array.isArray(data.segments) ? data.segments : []);
  el.rows.replaceChildren(...data.items.map(rowFor));
  const where = data.segment ? ` in segment ${data.segment}` : "";
  const order = data.sort === "change" ? "largest rise in risk first" : "highest risk first";
  // Which customers these are, in the API's words, and how many are left out.
  const others = data.show === "action" && data.others ? ` (${data.others} others need no action)` : "";
  const who = data.show === "action" ? "need action" : "at risk";
  el.caption.textContent = `${data.total} customers ${who}${where}, ${order}${others}`;
  el.definition.textContent = data.definition ? `Listed: ${data.definition}.` : "";
  el.pageInfo.textContent = data.items.length
    ? `${data.offset + 1}–${data.offset + data.items.length} of ${data.total}`
    : "No customers on this page";
  el.prev.disabled = data.offset <= 0;
  el.next.disabled = data.next_offset === null || data.next_offset === undefined;
}

function rowFor(item) {
  const id = item.customer_id;
  const reason = item.top_reasons && item.top_reasons.length ? item.top_reasons[0].text : "—";
  const openAlerts = Array.isArray(item.open_alerts) ? item.open_alerts.length : 0;
  return h(
    "tr",
    { "data-testid": "at-risk-row", "data-customer-id": id },
    h("th", { scope: "row" }, h("a", { href: customerHash(id), "data-focus-key": `row:${id}` }, id)),
    h("td", { "data-testid": "segment" }, item.segment),
    h("td", { class: "num", "data-testid": "risk" }, risk(item.churn_probability)),
    h("td", { class: "num", "data-testid": "score" }, score(item.engagement_score)),
    h(
      "td",
      { class: `num change ${changeClass(item.change)}`, "data-testid": "change" },
      changeText(item.change),
    ),
    h("td", { "data-testid": "top-reason" }, reason),
    h("td", { class: "num", "data-testid": "open-alerts" }, String(openAlerts)),
  );
}

// A click anywhere on a row opens the customer (the id link does the same by keyboard).
el.rows.addEventListener("click", (event) => {
  if (event.target.closest("a")) return;
  if (window.getSelection && String(window.getSelection())) return; // selecting text
  const row = event.target.closest("tr[data-customer-id]");
  if (row) window.location.hash = customerHash(row.getAttribute("data-customer-id"));
});

el.listControls.addEventListener("submit", (event) => event.preventDefault());
el.segment.addEventListener("change", () => {
  window.location.hash = listHash({ ...listRoute, segment: el.segment.value, offset: 0 });
});
el.sort.addEventListener("change", () => {
  window.location.hash = listHash({ ...listRoute, sort: el.sort.value, offset: 0 });
});
el.show.addEventListener("change", () => {
  window.location.hash = listHash({ ...listRoute, show: el.show.value, offset: 0 });
});
el.prev.addEventListener("click", () => {
  const limit = listData ? listData.limit : PAGE_SIZE;
  window.location.hash = listHash({ ...listRoute, offset: Math.max(0, listRoute.offset - limit) });
});
el.next.addEventListener("click", () => {
  if (listData && listData.next_offset !== null && listData.next_offset !== undefined) {
    window.location.hash = listHash({ ...listRoute, offset: listData.next_offset });
  }
});

// ---------------------------------------------------------------------------------------
// one customer

function showCustomer(id, previous) {
  el.listView.hidden = true;
  el.customerView.hidden = false;
  el.back.href = listHash(listRoute);
  document.title = `churnwatch: customer ${id}`;
  const url = `${API}/customers/${encodeURIComponent(id)}`;
  if (shown.customer.url !== url) {
    el.heading.textContent = `Customer ${id}`;
    el.status.textContent = "";
    el.customerBody.replaceChildren(h("p", {}, "Loading…"));
  }
  watch("customer", url, renderCustomer, () => {
    el.customerBody.replaceChildren(
      h("p", {}, "This customer could not be loaded (see the message above)."),
    );
  });
  if (!previous || previous.view !== "customer" || previous.id !== id) el.heading.focus();
}

function renderCustomer(c) {
  el.heading.textContent = `Customer ${c.customer_id}`;
  const reasons = Array.isArray(c.reasons) ? c.reasons : [];
  const history = Array.isArray(c.history) ? c.history : [];
  const alerts = Array.isArray(c.alerts) ? c.alerts : [];
  el.customerBody.replaceChildren(
    h(
      "dl",
      { class: "facts", "data-testid": "customer-facts" },
      fact("Segment", "segment", c.segment),
      fact("Risk of churn", "risk", risk(c.churn_probability)),
      fact("Engagement score", "score", `${score(c.engagement_score)} / 100`),
      fact("Change", "change", changeText(c.change)),
      fact("Last scored", "scored-at", timeEl(c.scored_at)),
      c.last_activity_at ? fact("Last activity", "last-activity", timeEl(c.last_activity_at)) : null,
    ),
    h("p", { class: "summary", "data-testid": "summary" }, c.summary || ""),
    h("h3", {}, "Why the risk changed"),
    reasons.length
      ? h(
          "ol",
          { class: "reasons", "data-testid": "reasons" },
          reasons.map((r) =>
            h(
              "li",
              { "data-testid": "reason", "data-factor": r.factor },
              h("span", { "data-testid": "reason-text" }, r.text),
              " ",
              h("span", { class: "contribution" }, `(${signed(r.contribution)})`),
            ),
          ),
        )
      : h("p", {}, "No reasons recorded."),
    h("h3", {}, "Risk over time"),
    chart(history),
    historyTable(history),
    h("h3", {}, `Alerts (${alerts.length})`),
    alerts.length
      ? h("ol", { class: "alerts", "data-testid": "alerts" }, alerts.map(alertItem))
      : h("p", {}, "No alerts for this customer."),
  );
}

const signed = (x) => (typeof x === "number" ? `${x >= 0 ? "+" : "-"}${Math.abs(x).toFixed(2)}` : "");

function fact(term, testid, value) {
  return h("div", {}, h("dt", {}, term), h("dd", { "data-testid": testid }, value));
}

// The API stores the wall-clock time a verdict was given as `given_at` (older drafts: `at`).
const givenAt = (verdict) => verdict.given_at || verdict.at || "";

function alertItem(alert, index) {
  const verdict = alert.verdict && alert.verdict.verdict ? alert.verdict : null;
  const titleId = `alert-${index}-title`;
  return h(
    "li",
    {
      class: "alert",
      "data-testid": "alert",
      "data-alert-id": alert.alert_id,
      "aria-labelledby": titleId,
    },
    h(
      "h4",
      { id: titleId },
      h("span", { "data-testid": "alert-rule" }, alert.rule),
      " ",
      h(
        "span",
        { class: `severity severity-${alert.severity}`, "data-testid": "alert-severity" },
        `${alert.severity} severity`,
      ),
    ),
    h(
      "p",
      { class: "meta" },
      h("span", { "data-testid": "alert-time" }, timeEl(alert.event_ts)),
      ` · risk ${risk(alert.churn_probability)} · score ${score(alert.score)}`,
      alert.action ? ` · action: ${alert.action.replace("_", " ")}` : "",
    ),
    h("p", { "data-testid": "alert-summary" }, alert.summary || ""),
    h(
      "p",
      { class: "meta" },
      "Alert id ",
      // Selected whole by one click, for `churnwatch feedback ALERT_ID VERDICT`.
      h("code", { class: "alert-id", "data-testid": "alert-id", title: "churnwatch feedback ALERT_ID VERDICT" }, alert.alert_id),
    ),
    h(
      "p",
      { class: "verdict" },
      "Verdict: ",
      h(
        "strong",
        { "data-testid": "verdict", "data-verdict": verdict ? verdict.verdict : "" },
        verdict ? verdictLabel(verdict.verdict) : "none yet",
      ),
      verdict && (verdict.by || givenAt(verdict))
        ? h(
            "span",
            { class: "verdict-by", "data-testid": "verdict-by" },
            verdict.by ? ` by ${verdict.by}` : "",
            givenAt(verdict) ? ` on ${formatTime(givenAt(verdict))}` : "",
          )
        : null,
    ),
    h(
      "div",
      { class: "feedback", role: "group", "aria-label": `Verdict on the ${alert.rule} alert` },
      VERDICTS.map(([value, label]) =>
        h(
          "button",
          {
            type: "button",
            "data-testid": `feedback-${value}`,
            "data-verdict": value,
            "data-focus-key": `feedback:${alert.alert_id}:${value}`,
            "aria-pressed": verdict && verdict.verdict === value ? "true" : "false",
          },
          label,
        ),
      ),
    ),
  );
}

el.customerBody.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-verdict]");
  const item = button && button.closest("[data-alert-id]");
  if (item) sendFeedback(item, button.getAttribute("data-verdict"));
});

async function sendFeedback(item, verdict) {
  const alertId = item.getAttribute("data-alert-id");
  const buttons = [...item.querySelectorAll("button[data-verdict]")];
  for (const button of buttons) button.disabled = true;
  el.status.textContent = "Saving the verdict…";
  const body = { verdict };
  const by = el.reviewer.value.trim();
  if (by) body.by = by;
  try {
    const text = await request(`${API}/alerts/${encodeURIComponent(alertId)}/feedback`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = JSON.parse(text);
    showError(null);
    // Show the stored verdict at once; the refresh below brings who and when from the store.
    const shownVerdict = item.querySelector('[data-testid="verdict"]');
    shownVerdict.textContent = verdictLabel(answer.verdict);
    shownVerdict.setAttribute("data-verdict", answer.verdict);
    for (const button of buttons) {
      button.setAttribute("aria-pressed", String(button.getAttribute("data-verdict") === answer.verdict));
    }
    el.status.textContent = answer.changed
      ? `Verdict saved: ${verdictLabel(answer.verdict)}.`
      : `The verdict was already ${verdictLabel(answer.verdict)}; nothing changed.`;
  } catch (err) {
    // In the status line too: the error banner is cleared by the next poll that succeeds.
    el.status.textContent = `The verdict was not saved: ${err.message}`;
    showError(`Could not save the verdict: ${err.message}`);
  } finally {
    for (const button of buttons) button.disabled = false;
  }
  if (currentView && currentView.view === "customer") restart();
}

const REVIEWER_KEY = "churnwatch.reviewer";
try {
  el.reviewer.value = window.localStorage.getItem(REVIEWER_KEY) || "";
  el.reviewer.addEventListener("change", () =>
    window.localStorage.setItem(REVIEWER_KEY, el.reviewer.value.trim()),
  );
} catch {
  // storage can be disabled; the name then lasts for this page only
}

// ---------------------------------------------------------------------------------------
// the score history chart: x = time, y = churn probability 0..1

const CHART = { width: 640, height: 260, left: 56, right: 20, top: 16, bottom: 52 };

function chart(history) {
  const { width, height, left, right, top, bottom } = CHART;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const times = history.map((point) => Date.parse(point.at));
  const valid = times.every(Number.isFinite);
  const t0 = valid && times.length ? Math.min(...times) : 0;
  const t1 = valid && times.length ? Math.max(...times) : 0;
  const xOf = (i) => {
    let share = 0.5;
    if (valid && t1 > t0) share = (times[i] - t0) / (t1 - t0);
    else if (history.length > 1) share = i / (history.length - 1);
    return left + share * plotW;
  };
  const yOf = (p) => top + (1 - Math.min(1, Math.max(0, Number(p) || 0))) * plotH;
  const points = history.map((point, i) => `${xOf(i).toFixed(1)},${yOf(point.churn_probability).toFixed(1)}`);

  const last = history[history.length - 1];
  const description = history.length
    ? `${history.length} scores from ${formatTime(history[0].at)} to ${formatTime(last.at)}; ` +
      `the latest risk is ${risk(last.churn_probability)}.`
    : "No scores yet.";

  const yTicks = [0, 0.25, 0.5, 0.75, 1].map((p) =>
    svg(
      "g",
      { class: "tick" },
      svg("line", { x1: left, x2: width - right, y1: yOf(p), y2: yOf(p), class: "grid" }),
      svg("text", { x: left - 8, y: yOf(p) + 4, "text-anchor": "end" }, percent(p)),
    ),
  );
  const xTicks = [];
  if (history.length && valid) {
    const count = t1 > t0 ? 4 : 1;
    const short = t1 - t0 < 2 * 24 * 3600 * 1000;
    for (let k = 0; k < count; k += 1) {
      const t = count === 1 ? t0 : t0 + ((t1 - t0) * k) / (count - 1);
      const x = count === 1 ? left + plotW / 2 : left + (plotW * k) / (count - 1);
      const stamp = new Date(t).toISOString();
      const anchor = count === 1 ? "middle" : k === 0 ? "start" : k === count - 1 ? "end" : "middle";
      xTicks.push(
        svg(
          "g",
          { class: "tick" },
          svg("line", { x1: x, x2: x, y1: top + plotH, y2: top + plotH + 5, class: "axis" }),
          svg(
            "text",
            { x, y: top + plotH + 18, "text-anchor": anchor },
            short ? stamp.slice(5, 16).replace("T", " ") : stamp.slice(0, 10),
          ),
        ),
      );
    }
  }

  return h(
    "figure",
    { class: "chart" },
    svg(
      "svg",
      {
        viewBox: `0 0 ${width} ${height}`,
        role: "img",
        "aria-labelledby": "chart-title chart-desc",
        "data-testid": "score-chart",
        "data-points": history.length,
        preserveAspectRatio: "xMidYMid meet",
      },
      svg("title", { id: "chart-title" }, "Churn probability over time"),
      svg("desc", { id: "chart-desc" }, description),
      yTicks,
      xTicks,
      svg("line", { x1: left, x2: left, y1: top, y2: top + plotH, class: "axis" }),
      svg("line", { x1: left, x2: width - right, y1: top + plotH, y2: top + plotH, class: "axis" }),
      svg(
        "text",
        { class: "axis-label", x: left + plotW / 2, y: height - 8, "text-anchor": "middle" },
        "time (UTC)",
      ),
      svg(
        "text",
        {
          class: "axis-label",
          x: -(top + plotH / 2),
          y: 14,
          transform: "rotate(-90)",
          "text-anchor": "middle",
        },
        "churn probability",
      ),
      svg("polyline", { class: "line", points: points.join(" "), "data-testid": "score-line" }),
      last
        ? svg("circle", {
            class: "last",
            cx: xOf(history.length - 1),
            cy: yOf(last.churn_probability),
            r: 4,
          })
        : null,
    ),
    h("figcaption", {}, description),
  );
}

function historyTable(history) {
  if (!history.length) return null;
  return h(
    "details",
    { class: "history" },
    h("summary", {}, "The same scores as a table"),
    h(
      "table",
      { "data-testid": "history-table" },
      h("caption", {}, "Score history, oldest first"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Time"),
          h("th", { scope: "col", class: "num" }, "Risk"),
          h("th", { scope: "col", class: "num" }, "Engagement score"),
        ),
      ),
      h(
        "tbody",
        {},
        history.map((point) =>
          h(
            "tr",
            {},
            h("td", {}, timeEl(point.at)),
            h("td", { class: "num" }, risk(point.churn_probability)),
            h("td", { class: "num" }, score(point.engagement_score)),
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
route();
