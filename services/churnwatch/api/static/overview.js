// churnwatch's overview page (/overview): the whole base from GET /api/v1/overview, polled
// every `?refresh=` ms (default 10000, the API caches it 10 s) and re-rendered only when the
// JSON text changed. Plain ES2020, no build step; data is written with textContent only.

import { askForToken, authHeaders, forgetToken } from "./auth.js";
import { h, svg } from "./dom.js";

const API = "/api/v1/overview";
const DEFAULT_REFRESH_MS = 10000;
const MIN_REFRESH_MS = 100;
const VERDICT_COLUMNS = ["open", "useful", "false_alarm", "saved", "lost"];

const query = new URLSearchParams(window.location.search);
const REFRESH_MS = (() => {
  const ms = Number(query.get("refresh"));
  return query.get("refresh") && Number.isFinite(ms) ? Math.max(MIN_REFRESH_MS, ms) : DEFAULT_REFRESH_MS;
})();

const el = {
  error: document.getElementById("error"),
  weeks: document.getElementById("weeks"),
  asOf: document.getElementById("as-of"),
  tiles: document.getElementById("tiles"),
  segments: document.getElementById("segments"),
  trend: document.getElementById("trend"),
  alertsCaption: document.getElementById("alerts-caption"),
  alertsBody: document.getElementById("alerts-body"),
  definitions: document.getElementById("definitions"),
};

const count = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "—");
const money = (n) =>
  typeof n === "number" ? n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) : "—";
const day = (iso) => (iso ? iso.slice(0, 10) : "—");
const fixed = (n, digits) => (typeof n === "number" ? n.toFixed(digits) : "—");

function showError(message) {
  el.error.textContent = message || "";
  el.error.hidden = !message;
}

// ---------------------------------------------------------------------------------------
// rendering

function tile(label, value, testid, detail) {
  return h(
    "div",
    { class: "tile" },
    h("dt", {}, label),
    h("dd", { "data-testid": testid }, value),
    detail ? h("dd", { class: "detail" }, detail) : null,
  );
}

function renderTiles(data) {
  const csat = data.satisfaction || {};
  const tickets = data.tickets || {};
  el.tiles.replaceChildren(
    tile("Customers", count(data.customers), "tile-customers", `${count(data.at_risk)} not cancelled`),
    tile("Need action", count(data.need_action.customers), "tile-need-action", `revenue ${money(data.need_action.revenue)}`),
    tile("Churned", count(data.churned.customers), "tile-churned", `revenue ${money(data.churned.revenue)}`),
    tile("Saved", count(data.saved.customers), "tile-saved", `revenue ${money(data.saved.revenue)}`),
    tile("Mean CSAT", fixed(csat.mean_csat, 2), "tile-csat", `${count(csat.ratings)} ratings`),
    tile(
      "Median resolution",
      typeof tickets.median_resolution_days === "number" ? `${fixed(tickets.median_resolution_days, 1)} days` : "—",
      "tile-resolution",
      `${count(tickets.resolved)} resolved, ${count(tickets.open)} open`,
    ),
  );
}

function histogram(segment, bins) {
  const width = 300;
  const height = 90;
  const pad = 16;
  const most = Math.max(1, ...segment.histogram);
  const step = (width - 2) / segment.histogram.length;
  const bars = segment.histogram.map((n, i) => {
    const barHeight = ((height - pad) * n) / most;
    return svg(
      "rect",
      {
        class: typeof segment.threshold === "number" && bins[i + 1] > segment.threshold ? "bar high" : "bar",
        x: (1 + i * step + 1).toFixed(1),
        y: (height - pad - barHeight).toFixed(1),
        width: (step - 2).toFixed(1),
        height: barHeight.toFixed(1),
      },
      svg("title", {}, `${Math.round(bins[i] * 100)}–${Math.round(bins[i + 1] * 100)}%: ${n} customers`),
    );
  });
  return svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${segment.segment}: customers by risk` },
    ...bars,
    svg("line", { class: "axis", x1: 0, x2: width, y1: height - pad, y2: height - pad }),
    svg("text", { x: 0, y: height - 3 }, "0%"),
    svg("text", { x: width / 2, y: height - 3, "text-anchor": "middle" }, "50%"),
    svg("text", { x: width, y: height - 3, "text-anchor": "end" }, "100%"),
  );
}

function renderSegments(data) {
  el.segments.replaceChildren(
    ...data.segments.map((s) =>
      h(
        "figure",
        { class: "segment chart", "data-testid": "segment", "data-segment": s.segment },
        histogram(s, data.risk_bins),
        h(
          "figcaption",
          {},
          h("strong", {}, s.segment),
          `: ${count(s.customers)} customers, ${count(s.need_action)} need action, mean risk ${fixed(s.mean_risk, 2)}, revenue ${money(s.revenue)}`,
        ),
      ),
    ),
  );
}

function renderTrend(data) {
  const weeks = data.weekly;
  const width = 640;
  const height = 200;
  const left = 44;
  const bottom = 28;
  const most = Math.max(1, ...weeks.map((w) => w.at_risk));
  const x = (i) => left + ((width - left - 10) * (weeks.length === 1 ? 0.5 : i / (weeks.length - 1)));
  const y = (n) => 10 + (height - bottom - 10) * (1 - n / most);
  const points = weeks.map((w, i) => `${x(i).toFixed(1)},${y(w.at_risk).toFixed(1)}`).join(" ");
  const chart = svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Customers at risk at the end of each week" },
    svg("line", { class: "axis", x1: left, x2: width - 10, y1: y(0), y2: y(0) }),
    svg("line", { class: "grid", x1: left, x2: width - 10, y1: y(most), y2: y(most) }),
    svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"),
    svg("text", { x: left - 6, y: y(most) + 4, "text-anchor": "end" }, String(most)),
    svg("polyline", { class: "line", points }),
    ...weeks.map((w, i) =>
      svg("circle", { class: "last", cx: x(i).toFixed(1), cy: y(w.at_risk).toFixed(1), r: 3 },
        svg("title", {}, `week ending ${day(w.week_end)}: ${w.at_risk} at risk of ${w.scored} scored, mean risk ${fixed(w.mean_risk, 2)}`)),
    ),
    svg("text", { x: left, y: height - 6 }, day(weeks[0].week_end)),
    svg("text", { x: width - 10, y: height - 6, "text-anchor": "end" }, day(weeks[weeks.length - 1].week_end)),
  );
  const last = weeks[weeks.length - 1];
  el.trend.replaceChildren(
    chart,
    h(
      "figcaption",
      { "data-testid": "trend-caption" },
      `${last.at_risk} customers at risk at the end of the last week (of ${last.scored} scored, ` +
        `mean risk ${fixed(last.mean_risk, 2)}, ${fixed(weeks[0].mean_risk, 2)} ${weeks.length} weeks before); ` +
        `${weeks.reduce((n, w) => n + w.cancelled, 0)} cancelled in these ${weeks.length} weeks.`,
    ),
  );
}

function renderAlerts(data) {
  const rows = [];
  for (const week of [...data.weekly].reverse()) {
    for (const [rule, mix] of Object.entries(week.by_rule)) {
      rows.push(
        h(
          "tr",
          { "data-testid": "alerts-row", "data-rule": rule, "data-week-end": week.week_end },
          h("td", {}, day(week.week_end)),
          h("th", { scope: "row" }, rule),
          h("td", { class: "num", "data-testid": "alerts" }, String(mix.alerts)),
          ...VERDICT_COLUMNS.map((v) => h("td", { class: "num", "data-testid": v }, String(mix[v] || 0))),
        ),
      );
    }
  }
  const total = data.weekly.reduce((n, w) => n + w.alerts, 0);
  el.alertsCaption.textContent = `${total} alerts in ${data.weeks} weeks, newest week first`;
  el.alertsBody.replaceChildren(
    ...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8 }, "No alerts in these weeks."))]),
  );
}

function renderDefinitions(data) {
  const entries = {
    "need action": data.need_action.definition,
    revenue: data.revenue_unit,
    ...data.definitions,
  };
  el.definitions.replaceChildren(
    ...Object.entries(entries).flatMap(([term, text]) => [h("dt", {}, term.replaceAll("_", " ")), h("dd", {}, text)]),
  );
}

function render(data) {
  if (!data.as_of) {
    el.asOf.textContent = `Nothing has been scored yet (${count(data.customers)} customers in the store).`;
    for (const node of [el.tiles, el.segments, el.trend, el.alertsBody, el.definitions]) node.replaceChildren();
    el.alertsCaption.textContent = "";
    return;
  }
  el.asOf.textContent = `As of ${data.as_of} (the newest scoring, event time), over the last ${data.weeks} weeks.`;
  renderTiles(data);
  renderSegments(data);
  renderTrend(data);
  renderAlerts(data);
  renderDefinitions(data);
}

// ---------------------------------------------------------------------------------------
// polling

let shownText = null;
let timer = null;
let generation = 0;

async function tick(mine) {
  const url = `${API}?weeks=${encodeURIComponent(el.weeks.value)}`;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() } });
    const text = await response.text();
    if (mine !== generation) return;
    if (response.status === 401) {
      forgetToken();
      askForToken("This API asks for a token (the read token is enough here).", restart);
    }
    if (!response.ok) {
      let what = text.trim().slice(0, 200);
      try {
        what = JSON.parse(text).error || what;
      } catch {
        // not JSON: show the text as it is
      }
      throw new Error(`The API answered ${response.status}: ${what}`);
    }
    showError(null);
    if (text !== shownText) {
      render(JSON.parse(text));
      shownText = text;
    }
  } catch (err) {
    if (mine !== generation) return;
    showError(err.message.startsWith("The API") ? err.message : `Could not reach the API at ${url}: ${err.message}`);
  }
  if (mine === generation) timer = setTimeout(() => tick(mine), REFRESH_MS);
}

function restart() {
  clearTimeout(timer);
  generation += 1;
  shownText = null;
  tick(generation);
}

const initialWeeks = query.get("weeks");
if (initialWeeks) {
  if (![...el.weeks.options].some((o) => o.value === initialWeeks)) {
    el.weeks.append(h("option", { value: initialWeeks }, initialWeeks));
  }
  el.weeks.value = initialWeeks;
}
el.weeks.addEventListener("change", () => {
  const next = new URLSearchParams(window.location.search);
  next.set("weeks", el.weeks.value);
  window.history.replaceState(null, "", `?${next}`);
  restart();
});
document.getElementById("controls").addEventListener("submit", (event) => event.preventDefault());
restart();
