// The cost dashboard: one page over the REST API (/restapi/v2), no build step.
//
// Every figure on screen is a value the API answered, formatted with two decimals; the
// raw value sits in the element's data-value, so tests (and people) can check one against
// the other. Each section records the query it shows in data-query and data-state
// ("loading", "ready", "error"). Text from the API is only ever set as textContent.

import { ANOMALIES, MODULES, anomalyMarks, anomalyPlugin, days as dayRange, evidence, plural, where } from "./recommendations.js";

const API = "/restapi/v2";
const SESSION_KEY = "cloudtuner.session";
const DAY = 86400;
const POD_TYPE = "K8s Pod";
const POD_LIMIT = 1000;
const TOP_SERIES = 12; // stacks in the trend chart; the rest is summed as "others"
const TABLE_ROWS = 50; // rows of the breakdown table
const FILTERS = ["k8s_cluster", "k8s_namespace", "k8s_node", "k8s_service", "cloud_account_id"];
const KEY_NAMES = {
  k8s_namespace: "namespace", k8s_node: "node", k8s_service: "service",
  k8s_cluster: "cluster", cloud_account_id: "cloud account", resource_type: "resource type",
};
const PALETTE = [
  "#2f6fde", "#e8743b", "#19a979", "#ed4a7b", "#945ecf", "#13a4b4",
  "#525df4", "#bf399e", "#6c8893", "#ee6868", "#2f9e44", "#d4a20b",
];
const OTHERS_COLOR = "#b8c0cc";
// Resource types overlap (a pod's cost is inside its namespace's, node's and cluster's), so a
// sum is over one type: the coarsest whose rows carry every dimension the view uses, which
// includes the costs finer types leave out (idle capacity, the cluster management fee).
const TYPES_CARRYING = [
  ["K8s Cluster", ["k8s_cluster", "cloud_account_id"]],
  ["K8s Namespace", ["k8s_cluster", "cloud_account_id", "k8s_namespace"]],
  ["K8s Node", ["k8s_cluster", "cloud_account_id", "k8s_node"]],
  ["K8s Pod", ["k8s_cluster", "cloud_account_id", "k8s_namespace", "k8s_node", "k8s_service"]],
];

const money = new Intl.NumberFormat("en-US", {
  style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 2,
});
const dayLabel = new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
const ANOMALY_LIMIT = 1000;

const $ = (id) => document.getElementById(id);

const state = {
  session: null, // {token, expires_at, user_id, organization_id}
  orgs: [],
  orgId: null,
  accounts: new Map(), // cloud account id → {id, name, type}
  breakdownBy: "k8s_namespace",
  pods: [],
  sort: { key: "cost", order: "desc" },
  generation: 0, // a newer refresh makes older answers stale
  charts: { trend: null, comparison: null },
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- formatting -----------------------------------------------------------------------

export function formatMoney(value) {
  return money.format(Number(value) || 0);
}

function setMoney(element, value) {
  element.textContent = formatMoney(value);
  element.dataset.value = String(value);
}

// Days of a breakdown_expenses answer's range with a cost (of ``key``; of any key when null).
function daysWithData(answer, key = null) {
  return Object.values(answer.breakdown ?? {})
    .filter((costs) => (key === null ? Object.keys(costs).length > 0 : key in costs)).length;
}

// How many days have data in this period and in the previous one (``previousAnswer``: the
// answer over the previous period's range), and how many days the previous period has.
function coverage(answer, previousAnswer, key = null) {
  return {
    now: daysWithData(answer, key), before: daysWithData(previousAnswer, key),
    length: Object.keys(previousAnswer.breakdown ?? {}).length,
  };
}

// This period against the previous one. When the previous period has data on fewer days
// than this one (a cluster connected during it, a late backfill), a percentage would
// measure the missing days, not the spending: the page says so instead.
function change(now, before, days) {
  if (days.before < days.now) {
    return { text: `previous period incomplete: ${days.before} of ${days.length} days have data`, kind: "incomplete" };
  }
  if (!before) return { text: "–", kind: "" };
  const percent = ((now - before) / before) * 100;
  return { text: `${percent >= 0 ? "+" : ""}${percent.toFixed(1)} %`, kind: now > before ? "up" : "down" };
}

function setChange(element, now, before, days) {
  const { text, kind } = change(now, before, days);
  element.textContent = text;
  element.classList.remove("up", "down", "incomplete");
  if (kind) element.classList.add(kind);
  element.dataset.currentDays = String(days.now);
  element.dataset.previousDays = String(days.before);
  element.dataset.periodDays = String(days.length);
}

function labelFor(by, key) {
  if (key === "" || key === "null" || key === null || key === undefined) return "(none)";
  if (by === "cloud_account_id") return state.accounts.get(key)?.name ?? key;
  return key;
}

// ---- dates (UTC days) -----------------------------------------------------------------

function isoDay(unix) {
  return new Date(unix * 1000).toISOString().slice(0, 10);
}

function dayStart(iso) {
  const [y, m, d] = iso.split("-").map(Number);
  return Date.UTC(y, m - 1, d) / 1000;
}

function defaultRange() {
  const today = Math.floor(Date.now() / 1000 / DAY) * DAY;
  return [isoDay(today - 29 * DAY), isoDay(today)];
}

// start of the first day .. last second of the last day
function range() {
  let start = dayStart($("start-date").value);
  let end = dayStart($("end-date").value);
  if (end < start) [start, end] = [end, start];
  return { start_date: start, end_date: end + DAY - 1 };
}

// ---- the API ----------------------------------------------------------------------------

function errorMessage(body, status) {
  if (body && typeof body === "object") {
    if (typeof body.error === "string") return body.error;
    if (typeof body.error?.message === "string") return body.error.message; // the REST API's shape
    if (typeof body.message === "string") return body.message;
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg ?? JSON.stringify(d)).join("; ");
  }
  return `HTTP ${status}`;
}

async function api(method, path, { query, body, auth = true } = {}) {
  const url = new URL(API + path, location.origin);
  if (query) url.search = query.toString();
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (auth && state.session) headers.Authorization = `Bearer ${state.session.token}`;
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    if (response.status === 401 && auth) signOut("Your session has ended: sign in again.");
    throw new ApiError(response.status, errorMessage(data, response.status));
  }
  return data;
}

function orgPath(suffix) {
  return `/organizations/${encodeURIComponent(state.orgId)}${suffix}`;
}

// The date range and every filter set, as the API's query parameters.
function filterQuery() {
  const query = new URLSearchParams();
  const { start_date, end_date } = range();
  query.set("start_date", String(start_date));
  query.set("end_date", String(end_date));
  for (const name of FILTERS) {
    const value = $(`filter-${name}`).value;
    if (value !== "") query.append(name, value);
  }
  return query;
}

// The resource type summed when grouping by ``by`` under the filters set in ``query``.
export function summedType(by, query) {
  const dimensions = [by, ...FILTERS.filter((name) => query.has(name))];
  return TYPES_CARRYING.find(([, carried]) => dimensions.every((d) => carried.includes(d)))[0];
}

// ---- messages ---------------------------------------------------------------------------

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---- session ----------------------------------------------------------------------------

function saveSession(session) {
  state.session = session;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
    if (session?.token && (!session.expires_at || session.expires_at * 1000 > Date.now())) return session;
  } catch { /* a damaged entry is no session */ }
  sessionStorage.removeItem(SESSION_KEY);
  return null;
}

function signOut(message) {
  state.session = null;
  state.orgId = null;
  state.generation += 1;
  sessionStorage.removeItem(SESSION_KEY);
  $("dashboard").hidden = true;
  $("session").hidden = true;
  $("auth").hidden = false;
  $("dashboard").dataset.state = "idle";
  showTab("costs"); // the next sign-in starts on the costs
  // Nothing of the last organization stays on the page: not its filters, nor a password.
  for (const name of FILTERS) $(`filter-${name}`).replaceChildren(new Option("All", ""));
  for (const id of ["breakdown-table", "comparison-table", "pod-table"]) $(id).tBodies[0].replaceChildren();
  for (const id of ["onboard-account-id", "onboard-password", "onboard-remote-write", "onboard-exporter-env", "chart-anomalies"]) {
    $(id).textContent = "";
  }
  $("onboard-result").hidden = true;
  state.pods = [];
  if (message) showError(message);
}

async function authenticate(path, body, button) {
  clearError();
  button.disabled = true;
  try {
    const answer = await api("POST", path, { body, auth: false });
    saveSession({
      token: answer.token, expires_at: answer.expires_at,
      user_id: answer.user_id, organization_id: answer.organization_id,
    });
    await enter();
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
  }
}

function formValues(form) {
  return Object.fromEntries(new FormData(form).entries());
}

// ---- organizations ----------------------------------------------------------------------

async function enter() {
  $("auth").hidden = true;
  $("dashboard").hidden = false;
  $("session").hidden = false;
  const answer = await api("GET", "/organizations");
  const orgs = Array.isArray(answer) ? answer : (answer?.organizations ?? []);
  state.orgs = orgs;
  const remembered = state.session.organization_id;
  state.orgId = (orgs.find((o) => o.id === remembered) ?? orgs[0])?.id ?? remembered;
  const select = $("org-select");
  select.replaceChildren(...orgs.map((o) => new Option(o.name ?? o.id, o.id)));
  select.value = state.orgId;
  $("org-picker").hidden = orgs.length < 2;
  showOrgName();
  await reloadFilters();
}

function showOrgName() {
  const org = state.orgs.find((o) => o.id === state.orgId);
  $("org-name").textContent = state.orgs.length < 2 ? (org?.name ?? "") : "";
}

// ---- filters ----------------------------------------------------------------------------

function optionOf(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value !== "object") return { value: String(value), label: String(value) };
  const id = value.id ?? value.name;
  if (id === null || id === undefined) return null;
  return { value: String(id), label: String(value.name ?? id) };
}

function fillSelect(select, values) {
  const kept = select.value;
  const options = [new Option("All", "")];
  const seen = new Set();
  for (const value of values) {
    const option = optionOf(value);
    if (!option || seen.has(option.value)) continue;
    seen.add(option.value);
    options.push(new Option(option.label, option.value));
  }
  // A chosen value stays chosen even where the new range has no cost for it.
  if (kept && !seen.has(kept)) options.push(new Option(kept, kept));
  select.replaceChildren(...options);
  select.value = kept;
}

async function reloadFilters() {
  const section = $("filters");
  section.dataset.state = "loading";
  const generation = ++state.generation;
  try {
    const { start_date, end_date } = range();
    const query = new URLSearchParams({ start_date: String(start_date), end_date: String(end_date) });
    const answer = await api("GET", orgPath("/available_filters"), { query });
    if (generation !== state.generation) return;
    const values = answer.filter_values ?? {};
    state.accounts = new Map((values.cloud_account ?? []).map((a) => [String(a.id), a]));
    for (const name of FILTERS) {
      const key = name === "cloud_account_id" ? "cloud_account" : name;
      fillSelect($(`filter-${name}`), values[key] ?? []);
    }
    section.dataset.state = "ready";
    section.dataset.query = query.toString();
  } catch (error) {
    section.dataset.state = "error";
    if (state.session) showError(error.message);
    return;
  }
  await refresh();
}

// ---- the sections -----------------------------------------------------------------------

async function refresh() {
  if (!state.session) return;
  const generation = ++state.generation;
  const query = filterQuery();
  const dashboard = $("dashboard");
  dashboard.dataset.state = "loading";
  dashboard.dataset.query = query.toString();
  const results = await Promise.allSettled([
    section("trend", generation, query, loadTrend),
    section("comparison", generation, query, loadComparison),
    section("pods", generation, query, loadPods),
  ]);
  if (generation !== state.generation) return;
  const failed = results.find((r) => r.status === "rejected");
  if (failed) {
    dashboard.dataset.state = "error";
    if (state.session) showError(failed.reason.message);
  } else {
    dashboard.dataset.state = "ready";
    clearError();
  }
}

// Runs one section's load and marks it; renders only if no newer refresh started.
async function section(id, generation, query, load) {
  const element = $(id);
  element.dataset.state = "loading";
  try {
    const sent = new URLSearchParams(query);
    const render = await load(sent);
    if (generation !== state.generation) return;
    render();
    element.dataset.query = sent.toString();
    element.dataset.state = "ready";
  } catch (error) {
    if (generation === state.generation) element.dataset.state = "error";
    throw error;
  }
}

function chartsAvailable() {
  const ok = typeof window.Chart === "function";
  $("chart-missing").hidden = ok;
  return ok;
}

function moneyTicks() {
  return { callback: (value) => formatMoney(value) };
}

function tooltip() {
  return { callbacks: { label: (item) => `${item.dataset.label}: ${formatMoney(item.raw)}` } };
}

// A breakdown, then the same breakdown over its previous period: the first answer sums the
// previous period into one figure, the second tells which of its days have data. Sections
// record the second query in data-previous-query.
async function breakdownAndPrevious(query) {
  const answer = await api("GET", orgPath("/breakdown_expenses"), { query });
  const previousQuery = new URLSearchParams(query);
  previousQuery.set("start_date", String(answer.previous_range_start));
  previousQuery.set("end_date", String(answer.start_date - 1));
  const previousAnswer = await api("GET", orgPath("/breakdown_expenses"), { query: previousQuery });
  return { answer, previousAnswer, previousQuery };
}

// Daily cost stacked by the chosen dimension, its total and previous total.
async function loadTrend(query) {
  const by = state.breakdownBy;
  query.set("breakdown_by", by);
  query.set("resource_type", summedType(by, query));
  const [{ answer, previousAnswer, previousQuery }, anomalies] = await Promise.all([
    breakdownAndPrevious(query), loadAnomalies(query),
  ]);
  return () => {
    renderTrend(answer, previousAnswer, by, query.get("resource_type"), anomalies);
    $("trend").dataset.previousQuery = previousQuery.toString();
    $("trend").dataset.anomalyQuery = anomalies.query.toString();
  };
}

// The active cost anomalies (module k8s_cost_anomalies) of the accounts the filters choose,
// with the cluster and namespace filters the chart's query was sent with (anomalyMarks).
// Marks are extra: when they cannot be read the chart still shows the costs, and says so.
async function loadAnomalies(query) {
  const asked = new URLSearchParams({ type: ANOMALIES, limit: String(ANOMALY_LIMIT) });
  if (query.get("cloud_account_id")) asked.set("cloud_account_id", query.get("cloud_account_id"));
  const filters = { k8s_cluster: query.get("k8s_cluster") ?? "", k8s_namespace: query.get("k8s_namespace") ?? "" };
  try {
    const answer = await api("GET", orgPath("/optimizations"), { query: asked });
    return { items: answer.optimizations?.[ANOMALIES]?.items ?? [], query: asked, filters, error: null };
  } catch (error) {
    if (error.status === 401) throw error;
    return { items: [], query: asked, filters, error: error.message };
  }
}

// Under the chart, the anomalies it marks: their days, where, and how far from the baseline.
function renderAnomalies(anomalies, marks) {
  const element = $("chart-anomalies");
  const shown = [...new Set(marks.flatMap((m) => m.items))].sort((a, b) => a.start - b.start || where(a).localeCompare(where(b)));
  element.dataset.value = JSON.stringify(marks.map((m) => m.day));
  if (anomalies.error) {
    element.textContent = `Cost anomalies could not be read: ${anomalies.error}`;
  } else if (shown.length) {
    element.textContent = "Cost anomalies (marked red on the chart): " + shown.map((item) =>
      `${where(item)} ${dayRange(item.start, item.end, FMT)}, ${item.direction} ${formatMoney(Math.abs(item.excess_cost))}`).join("; ") + ".";
  } else {
    element.textContent = "";
  }
}

function renderTrend(answer, previousAnswer, by, type, anomalies) {
  $("chart-resource-type").textContent = type;
  setMoney($("chart-total"), answer.total ?? 0);
  setMoney($("chart-previous-total"), answer.previous_total ?? 0);
  setChange($("chart-change"), answer.total ?? 0, answer.previous_total ?? 0, coverage(answer, previousAnswer));
  $("trend").dataset.breakdownBy = by;

  const counts = answer.counts ?? {};
  const keys = Object.keys(counts).sort((a, b) => (counts[b].total ?? 0) - (counts[a].total ?? 0) || a.localeCompare(b));
  const colors = new Map(keys.map((key, i) => [key, i < TOP_SERIES ? PALETTE[i % PALETTE.length] : OTHERS_COLOR]));

  // The table: every key's total over the range, biggest first.
  $("breakdown-key-head").textContent = KEY_NAMES[by] ?? by;
  const rows = keys.slice(0, TABLE_ROWS).map((key) => {
    const row = document.createElement("tr");
    row.dataset.testid = "breakdown-row";
    row.dataset.key = key;
    const name = document.createElement("td");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colors.get(key);
    name.append(swatch, labelFor(by, key));
    const cost = document.createElement("td");
    cost.className = "num";
    setMoney(cost, counts[key].total ?? 0);
    const previous = document.createElement("td");
    previous.className = "num";
    setMoney(previous, counts[key].previous_total ?? 0);
    row.append(name, cost, previous);
    return row;
  });
  if (keys.length > TABLE_ROWS) {
    const more = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 3;
    cell.className = "muted";
    cell.textContent = `and ${keys.length - TABLE_ROWS} more`;
    more.append(cell);
    rows.push(more);
  }
  $("breakdown-table").tBodies[0].replaceChildren(...rows);

  // Every day of the range, and any day the API answered outside it.
  const { start_date, end_date } = range();
  const days = new Set();
  for (let day = start_date; day <= end_date; day += DAY) days.add(day);
  const breakdown = answer.breakdown ?? {};
  for (const day of Object.keys(breakdown)) days.add(Number(day));
  const sortedDays = [...days].sort((a, b) => a - b);
  const marks = anomalyMarks(anomalies.items, sortedDays, anomalies.filters);
  renderAnomalies(anomalies, marks);

  if (!chartsAvailable()) return;
  const costOn = (day, key) => breakdown[String(day)]?.[key]?.cost ?? 0;
  const top = keys.slice(0, TOP_SERIES);
  const rest = keys.slice(TOP_SERIES);
  const datasets = top.map((key) => ({
    label: labelFor(by, key), backgroundColor: colors.get(key),
    data: sortedDays.map((day) => costOn(day, key)),
  }));
  if (rest.length) {
    datasets.push({
      label: `${rest.length} others`, backgroundColor: OTHERS_COLOR,
      data: sortedDays.map((day) => rest.reduce((sum, key) => sum + costOn(day, key), 0)),
    });
  }
  const data = { labels: sortedDays.map((day) => dayLabel.format(new Date(day * 1000))), datasets };
  if (state.charts.trend) {
    state.charts.trend.data = data;
    state.charts.trend.$anomalyMarks = marks;
    state.charts.trend.update();
    return;
  }
  state.charts.trend = new window.Chart($("trend-chart"), {
    type: "bar",
    data,
    plugins: [anomalyPlugin],
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      // grace: room above the tallest bar for the anomaly marks
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, grace: "8%", ticks: moneyTicks() } },
      plugins: { legend: { position: "bottom" }, tooltip: tooltip() },
    },
  });
  state.charts.trend.$anomalyMarks = marks;
  state.charts.trend.update(); // drawn again, with the marks
}

// Each cluster's total against the previous period of the same length.
async function loadComparison(query) {
  query.set("breakdown_by", "k8s_cluster");
  query.set("resource_type", summedType("k8s_cluster", query));
  const { answer, previousAnswer, previousQuery } = await breakdownAndPrevious(query);
  return () => {
    renderComparison(answer, previousAnswer, query.get("resource_type"));
    $("comparison").dataset.previousQuery = previousQuery.toString();
  };
}

function renderComparison(answer, previousAnswer, type) {
  $("comparison-resource-type").textContent = type;
  setMoney($("comparison-total"), answer.total ?? 0);
  setMoney($("comparison-previous-total"), answer.previous_total ?? 0);
  const days = coverage(answer, previousAnswer);
  setChange($("comparison-change"), answer.total ?? 0, answer.previous_total ?? 0, days);
  const previousDays = Object.keys(previousAnswer.breakdown ?? {}).map(Number).sort((a, b) => a - b);
  $("comparison-coverage").textContent = previousDays.length
    ? `Days with data: ${days.now} of ${Object.keys(answer.breakdown ?? {}).length} in this period, ${days.before} of `
      + `${days.length} in the previous one (${dayLabel.format(new Date(previousDays[0] * 1000))} – `
      + `${dayLabel.format(new Date(previousDays.at(-1) * 1000))}).`
    : "";
  const counts = answer.counts ?? {};
  const clusters = Object.keys(counts).sort((a, b) => (counts[b].total ?? 0) - (counts[a].total ?? 0) || a.localeCompare(b));
  const rows = clusters.map((cluster) => {
    const { total = 0, previous_total: previous = 0 } = counts[cluster];
    const row = document.createElement("tr");
    row.dataset.testid = "comparison-row";
    row.dataset.key = cluster;
    const name = document.createElement("td");
    name.textContent = labelFor("k8s_cluster", cluster);
    const now = document.createElement("td");
    now.className = "num";
    setMoney(now, total);
    const before = document.createElement("td");
    before.className = "num";
    setMoney(before, previous);
    const changed = document.createElement("td");
    changed.className = "num";
    changed.dataset.field = "change";
    setChange(changed, total, previous, coverage(answer, previousAnswer, cluster));
    row.append(name, now, before, changed);
    return row;
  });
  $("comparison-table").tBodies[0].replaceChildren(...rows);

  if (!chartsAvailable()) return;
  const data = {
    labels: clusters.map((c) => labelFor("k8s_cluster", c)),
    datasets: [
      { label: "this period", backgroundColor: PALETTE[0], data: clusters.map((c) => counts[c].total ?? 0) },
      { label: "previous period", backgroundColor: OTHERS_COLOR, data: clusters.map((c) => counts[c].previous_total ?? 0) },
    ],
  };
  if (state.charts.comparison) {
    state.charts.comparison.data = data;
    state.charts.comparison.update();
    return;
  }
  state.charts.comparison = new window.Chart($("comparison-chart"), {
    type: "bar",
    data,
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, indexAxis: "y",
      scales: { x: { beginAtZero: true, ticks: moneyTicks() } },
      plugins: { legend: { position: "bottom" }, tooltip: tooltip() },
    },
  });
}

// The pods and their cost over the range.
async function loadPods(query) {
  query.set("resource_type", POD_TYPE);
  query.set("limit", String(POD_LIMIT));
  const answer = await api("GET", orgPath("/clean_expenses"), { query });
  return () => {
    state.pods = answer.clean_expenses ?? [];
    setMoney($("pod-total"), answer.total_cost ?? 0);
    const total = answer.total_count ?? state.pods.length;
    $("pod-count").textContent = state.pods.length < total ? `${state.pods.length} of ${total} pods` : `${total} pods`;
    $("pod-count").dataset.value = String(total);
    renderPods();
  };
}

function podName(pod) {
  return pod.resource_name || pod.cloud_resource_id || pod.resource_id || "";
}

function renderPods() {
  const { key, order } = state.sort;
  const byName = (a, b) => podName(a).localeCompare(podName(b)) || String(a.resource_id).localeCompare(String(b.resource_id));
  const compare = key === "name" ? byName : (a, b) => (a.cost ?? 0) - (b.cost ?? 0) || byName(a, b);
  const pods = [...state.pods].sort((a, b) => (order === "asc" ? compare(a, b) : compare(b, a)));
  const table = $("pod-table");
  table.dataset.sort = key;
  table.dataset.order = order;
  const rows = pods.map((pod) => {
    const row = document.createElement("tr");
    row.dataset.testid = "pod-row";
    row.dataset.resourceId = pod.resource_id ?? "";
    row.dataset.name = podName(pod);
    const cells = [podName(pod), pod.k8s_namespace, pod.k8s_cluster, pod.k8s_node, pod.k8s_service].map((text, i) => {
      const cell = document.createElement("td");
      cell.textContent = text ?? "";
      cell.dataset.field = ["name", "k8s_namespace", "k8s_cluster", "k8s_node", "k8s_service"][i];
      if (i === 0 && pod.cloud_resource_id) cell.title = pod.cloud_resource_id;
      return cell;
    });
    const cost = document.createElement("td");
    cost.className = "num";
    cost.dataset.field = "cost";
    setMoney(cost, pod.cost ?? 0);
    row.dataset.cost = String(pod.cost ?? 0);
    row.append(...cells, cost);
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
}

// ---- onboarding -------------------------------------------------------------------------

function envYaml(env) {
  const lines = ["env:"];
  for (const [name, value] of Object.entries(env ?? {})) {
    lines.push(`  - name: ${name}`, `    value: ${JSON.stringify(String(value))}`);
  }
  return lines.join("\n");
}

async function onboard(form, button) {
  clearError();
  button.disabled = true;
  try {
    const { name } = formValues(form);
    const account = await api("POST", orgPath("/cloud_accounts"), { body: { name, type: "kubernetes_cnr" } });
    $("onboard-account-id").textContent = account.id ?? account.credentials?.account_id ?? "";
    $("onboard-password").textContent = account.credentials?.password ?? "";
    $("onboard-remote-write").textContent = account.config?.prometheus_remote_write ?? "";
    $("onboard-exporter-env").textContent = envYaml(account.config?.exporter_env);
    $("onboard-result").hidden = false;
    form.reset();
    await reloadFilters();
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
  }
}

// ---- tabs ---------------------------------------------------------------------------------
// Four views of the organization, one at a time: its costs (the default), the rightsizing
// recommendations, every optimization module's recommendations, the live view. Each names the sections it shows, and what opening and
// closing it starts and stops. Clicking the open tab again goes back to the costs.

const TABS = {
  costs: { sections: ["filters", "trend", "comparison", "pods", "onboarding"] },
  rightsizing: {
    sections: ["filters", "rightsizing"], // the cluster, namespace and account filters apply
    open: () => loadRightsizing(),
    close: () => { rightsizing.generation += 1; }, // answers still on their way are dropped
  },
  recommendations: {
    sections: ["recommendations"],
    open: () => loadRecommendations(),
    close: () => { recommendations.generation += 1; },
  },
  live: { sections: ["live"], open: () => openLive(), close: () => closeLive() },
};
const tabs = { open: "costs" };

function showTab(name) {
  if (name === tabs.open) return;
  TABS[tabs.open].close?.();
  tabs.open = name;
  for (const tab of Object.keys(TABS)) $(`tab-${tab}`).setAttribute("aria-pressed", String(tab === name));
  const shown = new Set(TABS[name].sections);
  for (const id of new Set(Object.values(TABS).flatMap((tab) => tab.sections))) $(id).hidden = !shown.has(id);
  TABS[name].open?.();
}

function wireTabs() {
  for (const name of Object.keys(TABS)) {
    $(`tab-${name}`).addEventListener("click", () => showTab(tabs.open === name ? "costs" : name));
  }
}

// ---- rightsizing tab ----------------------------------------------------------------------
// The rightsizing job's recommendations (GET k8s_rightsizing), in the API's order: the
// largest monthly savings first. The tab shows them in place of the cost sections; the
// filters stay, since their cluster, namespace and cloud account apply (the dates do not:
// a recommendation covers the job's own window, shown above the table).

const RIGHTSIZING_LIMIT = 500;
const RIGHTSIZING_FILTERS = ["k8s_cluster", "k8s_namespace", "cloud_account_id"];
const rightsizing = { generation: 0 };

function millicores(cores) {
  return cores === null || cores === undefined ? "–" : `${Math.round(cores * 1000)}m`;
}

function mebibytes(bytes) {
  return bytes === null || bytes === undefined ? "–" : `${Math.ceil(bytes / 1048576)}Mi`;
}

function share(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 100)} %`;
}

// The formatters recommendations.js is given.
const FMT = { money: formatMoney, millicores, mebibytes, share, day: (unix) => dayLabel.format(new Date(unix * 1000)) };

async function loadRightsizing() {
  if (!state.session || tabs.open !== "rightsizing") return;
  const element = $("rightsizing");
  const generation = ++rightsizing.generation;
  const query = new URLSearchParams({ limit: String(RIGHTSIZING_LIMIT) });
  for (const name of RIGHTSIZING_FILTERS) {
    const value = $(`filter-${name}`).value;
    if (value !== "") query.append(name, value);
  }
  element.dataset.state = "loading";
  try {
    const answer = await api("GET", orgPath("/k8s_rightsizing"), { query });
    if (generation !== rightsizing.generation) return;
    renderRightsizing(answer);
    element.dataset.query = query.toString();
    element.dataset.state = "ready";
  } catch (error) {
    if (generation === rightsizing.generation) element.dataset.state = "error";
    if (state.session) showError(error.message);
  }
}

function rightsizingCell(text, field, value, numeric = false) {
  const cell = document.createElement("td");
  cell.textContent = text;
  cell.dataset.field = field;
  if (value !== undefined) cell.dataset.value = String(value);
  if (numeric) cell.className = "num";
  return cell;
}

function renderRightsizing(answer) {
  const items = answer.k8s_rightsizing ?? [];
  const total = answer.total_count ?? items.length;
  $("rightsizing-count").textContent = items.length < total ? `${items.length} of ${total} containers` : `${total} containers`;
  $("rightsizing-count").dataset.value = String(total);
  setMoney($("rightsizing-savings"), answer.monthly_savings ?? 0);
  setMoney($("rightsizing-extra"), answer.extra_monthly_cost ?? 0);
  const run = items[0]?.run;
  $("rightsizing-run").textContent = run
    ? `Computed ${new Date(run.computed_at * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC over ${run.window_days} days `
      + `of usage: ${run.algorithm === "quantile" ? `quantile ${run.quantile}` : "peak"} ÷ target utilization `
      + `(CPU ${share(run.target_cpu_utilization)}, memory ${share(run.target_memory_utilization)}); savings at each node's prices, 730 h a month.`
    : "No recommendations yet: the rightsizing job has not run for these accounts.";
  const rows = items.map((item) => {
    const row = document.createElement("tr");
    row.dataset.testid = "rightsizing-row";
    row.dataset.id = item.id;
    const workload = item.controller
      ? `${item.namespace}/${item.controller_kind}/${item.controller}`
      : `${item.namespace}/pod/${item.pod}`;
    const savings = document.createElement("td");
    savings.dataset.field = "monthly_savings";
    setMoney(savings, item.monthly_savings ?? 0);
    if (item.monthly_savings === null || item.monthly_savings === undefined) {
      savings.textContent = "–"; // unknown: a node without price, or no usage seen
      savings.dataset.value = "";
    }
    savings.className = `num ${(item.monthly_savings ?? 0) < 0 ? "up" : "down"}`;
    // What the recommendation was sized on: the container's usage series or the hourly averages.
    const sized = (cell) => { cell.title = `sized on ${item.sized_on ?? "hourly averages"}`; cell.dataset.sizedOn = item.sized_on ?? ""; return cell; };
    const status = rightsizingCell(item.status, "status");
    if (item.status === "under-provisioned") status.title = `the recommended requests cost ${formatMoney(item.extra_monthly_cost)} more a month`;
    row.append(
      rightsizingCell(workload, "workload"),
      rightsizingCell(item.container, "container"),
      rightsizingCell(item.cluster, "cluster"),
      rightsizingCell(String(item.replicas), "replicas", item.replicas, true),
      sized(rightsizingCell(`${millicores(item.current_cpu_cores)} → ${millicores(item.recommended_cpu_cores)}`, "cpu",
        item.recommended_cpu_cores, true)),
      sized(rightsizingCell(`${mebibytes(item.current_memory_bytes)} → ${mebibytes(item.recommended_memory_bytes)}`, "memory",
        item.recommended_memory_bytes, true)),
      rightsizingCell(share(item.total_efficiency), "total_efficiency", item.total_efficiency, true),
      savings,
      status,
    );
    return row;
  });
  $("rightsizing-table").tBodies[0].replaceChildren(...rows);
}

function wireRightsizing() {
  // Listeners added after the page's own: the organization and filters are already set.
  $("org-select").addEventListener("change", () => loadRightsizing());
  for (const name of RIGHTSIZING_FILTERS) $(`filter-${name}`).addEventListener("change", () => loadRightsizing());
  $("filters-reset").addEventListener("click", () => loadRightsizing());
  // Signed out (the dashboard hidden, the tab closed): nothing of the organization kept.
  new MutationObserver(() => {
    if (!$("dashboard").hidden) return;
    $("rightsizing-table").tBodies[0].replaceChildren();
    $("rightsizing-run").textContent = "";
  }).observe($("dashboard"), { attributes: true, attributeFilter: ["hidden"] });
}

// ---- recommendations tab ------------------------------------------------------------------
// Every optimization module's recommendations (GET optimizations, OptScale's shape): the total
// saving, each module's count and saving, its items with their evidence. The status picker
// shows the active items (each with a Dismiss button) or the dismissed or excluded ones (each
// with Restore); a button PATCHes the item, then the view is asked again, so every figure on
// screen is still the API's answer. The dates and filters of the costs do not apply: an item
// covers its job's own window, shown under each module.

const RECOMMENDATION_LIMIT = 500;
const recommendations = { generation: 0 };
const utcTime = (unix) => (unix ? `${new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC` : "never");

async function loadRecommendations() {
  if (!state.session || tabs.open !== "recommendations") return;
  const element = $("recommendations");
  const generation = ++recommendations.generation;
  const query = new URLSearchParams({ limit: String(RECOMMENDATION_LIMIT), status: $("recommendations-status").value });
  element.dataset.state = "loading";
  try {
    const answer = await api("GET", orgPath("/optimizations"), { query });
    if (generation !== recommendations.generation) return;
    renderRecommendations(answer);
    element.dataset.query = query.toString();
    element.dataset.state = "ready";
  } catch (error) {
    if (generation === recommendations.generation) element.dataset.state = "error";
    if (state.session) showError(error.message);
  }
}

// Dismiss (status "dismissed") or restore (status "active") one item, then show the view again.
async function markRecommendation(button, status) {
  clearError();
  button.disabled = true;
  $("recommendations").dataset.state = "loading";
  try {
    await api("PATCH", orgPath(`/optimizations/${encodeURIComponent(button.dataset.id)}`), { body: { status } });
  } catch (error) {
    button.disabled = false;
    $("recommendations").dataset.state = "error";
    showError(error.message);
    return;
  }
  await loadRecommendations();
}

function summed(summaries) {
  const all = Object.values(summaries ?? {});
  return { count: all.reduce((n, s) => n + (s.count ?? 0), 0), saving: all.reduce((n, s) => n + (s.saving ?? 0), 0) };
}

function renderRecommendations(answer) {
  const status = answer.status ?? $("recommendations-status").value;
  $("recommendations-total-label").textContent = status === "active" ? "Total saving" : `Total saving of the ${status} items`;
  setMoney($("recommendations-total"), answer.total_saving ?? 0);
  for (const mark of ["dismissed", "excluded"]) {
    const { count, saving } = summed(answer[`${mark}_optimizations`]);
    const element = $(`recommendations-${mark}`);
    setMoney(element, saving);
    element.textContent = `${count} (${formatMoney(saving)})`;
    element.dataset.count = String(count);
  }
  $("recommendations-run").textContent = answer.last_run
    ? `Last run ${utcTime(answer.last_run)}, last completed ${utcTime(answer.last_completed)}, next ${utcTime(answer.next_run)}.`
    : "No recommendations yet: the optimizations job (python -m jobs.optimizations) has not run for this organization.";
  const optimizations = answer.optimizations ?? {};
  const blocks = MODULES.filter(([name]) => name in optimizations)
    .map(([name, title, what]) => moduleBlock(name, title, what, optimizations[name], status));
  $("recommendations-modules").replaceChildren(...blocks);
}

function moduleBlock(name, title, what, module, status) {
  const block = document.createElement("div");
  block.className = "module";
  block.id = `module-${name}`;
  block.dataset.testid = "recommendation-module";
  block.dataset.module = name;
  const head = document.createElement("h3");
  const count = document.createElement("span");
  count.dataset.field = "count";
  count.dataset.value = String(module.count ?? 0);
  count.textContent = plural(module.count ?? 0, "item");
  const saving = document.createElement("strong");
  saving.dataset.field = "saving";
  setMoney(saving, module.saving ?? 0);
  head.append(`${title}: `, count, ", saving ", saving, " a month");
  const about = document.createElement("p");
  about.className = "muted small";
  const notes = (module.runs ?? []).flatMap((run) => [
    ...(run.error ? [`failed: ${run.error}`] : []), ...(run.notes ?? []),
  ]);
  about.textContent = `${what}. ${module.last_run ? `Last run ${utcTime(module.last_run)}` : "Not run yet"}`
    + (Object.keys(module.options ?? {}).length ? `; options ${JSON.stringify(module.options)}` : "")
    + (notes.length ? `; ${notes.join("; ")}` : "") + ".";
  const table = document.createElement("table");
  table.className = "compact";
  table.innerHTML = "<thead><tr><th>resource</th><th>cloud account</th><th>where</th><th>evidence</th>"
    + "<th class=\"num\">saving / month</th><th></th></tr></thead><tbody></tbody>";
  const items = module.items ?? [];
  const rows = items.map((item) => {
    const row = document.createElement("tr");
    row.dataset.testid = "recommendation-row";
    row.dataset.id = item.id;
    row.dataset.module = name;
    const cells = [[item.resource_name, "resource_name"], [item.cloud_account_name ?? item.cloud_account_id, "cloud_account"],
      [where(item), "where"], [evidence(item, FMT), "evidence"]].map(([text, field]) => {
      const cell = document.createElement("td");
      cell.textContent = text ?? "";
      cell.dataset.field = field;
      return cell;
    });
    cells[3].title = cells[3].textContent; // long: the whole line on hover
    const value = document.createElement("td");
    value.className = "num";
    value.dataset.field = "saving";
    setMoney(value, item.saving ?? 0);
    const action = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = item.id;
    button.dataset.action = status === "active" ? "dismiss" : "restore";
    button.textContent = status === "active" ? "Dismiss" : "Restore";
    button.addEventListener("click", () => markRecommendation(button, status === "active" ? "dismissed" : "active"));
    action.append(button);
    row.append(...cells, value, action);
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
  const more = document.createElement("p");
  more.className = "muted small";
  more.textContent = items.length < (module.count ?? 0) ? `The ${items.length} largest of ${module.count} items.` : "";
  block.append(head, about, table, more);
  return block;
}

function wireRecommendations() {
  $("recommendations-status").addEventListener("change", () => loadRecommendations());
  $("org-select").addEventListener("change", () => loadRecommendations());
  // Signed out (the dashboard hidden, the tab closed): nothing of the organization kept.
  new MutationObserver(() => {
    if (!$("dashboard").hidden) return;
    $("recommendations-modules").replaceChildren();
    $("recommendations-run").textContent = "";
    $("recommendations-status").value = "active";
  }).observe($("dashboard"), { attributes: true, attributeFilter: ["hidden"] });
}

// ---- live tab -----------------------------------------------------------------------------
// The last hours of one cloud account (GET k8s_live: Metroculus's allow-listed range queries
// over the TSDB): per container its CPU and working set against requests and limits,
// throttling, restarts and OOM kills, and node memory, from the customer's cAdvisor,
// kube-state-metrics and node-exporter series (a point every 15 s over the last hour; a
// point the TSDB has no value for is a gap); the exporter's hourly averages against requests
// per namespace or pod; cost rates per namespace, node or cluster. The tab shows them in place of the other sections and asks again every
// 30 s while it is open and the page is visible; it says when it last got an answer.

const LIVE_REFRESH_MS = 30000;
// range → [seconds, step]: about 240–360 points a series, whatever the range.
const LIVE_RANGES = { "1h": [3600, 15], "6h": [21600, 60], "24h": [86400, 300] };
const LIVE_LEGEND_MAX = 12; // more groups than this: the table names them, the legend would not fit
// generation: of the series asked; listing: of the account list (each drops answers older than it)
const live = { generation: 0, listing: 0, timer: null, chart: null, unit: "" };
const liveTime = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: "UTC" });

function liveValue(value, unit = live.unit) {
  if (value === null || value === undefined) return "–";
  if (unit === "USD/hour") return `${formatMoney(value)}/h`;
  if (unit === "bytes") return value >= 2 ** 30 ? `${(value / 2 ** 30).toFixed(2)} GiB` : `${(value / 2 ** 20).toFixed(1)} MiB`;
  if (unit === "ratio") return `${(value * 100).toFixed(1)} %`;
  if (unit === "count") return String(value);
  return `${Number(value).toFixed(3)} cores`;
}

function openLive() {
  live.timer = setInterval(() => { if (!document.hidden) refreshLive(); }, LIVE_REFRESH_MS);
  loadLiveAccounts();
}

function closeLive() {
  clearInterval(live.timer);
  live.timer = null;
  live.generation += 1; // answers still on their way are dropped
  live.listing += 1;
}

// The organization's accounts in the picker (the chosen one kept), then the series.
async function loadLiveAccounts() {
  const listing = ++live.listing;
  try {
    const answer = await api("GET", orgPath("/cloud_accounts"));
    if (listing !== live.listing) return;
    const accounts = answer.cloud_accounts ?? [];
    const select = $("live-account");
    const kept = select.value;
    select.replaceChildren(...accounts.map((a) => new Option(a.name ?? a.id, a.id)));
    if (accounts.some((a) => a.id === kept)) select.value = kept;
    $("live-no-account").hidden = accounts.length > 0;
  } catch (error) {
    if (listing === live.listing) $("live").dataset.state = "error";
    if (state.session) showError(error.message);
    return;
  }
  await refreshLive();
}

function clearLive() {
  $("live-table").tBodies[0].replaceChildren();
  for (const id of ["live-description", "live-count"]) $(id).textContent = "";
  $("live-refreshed").textContent = "Not refreshed yet.";
  $("live-refreshed").dataset.value = "";
  if (live.chart) {
    live.chart.data = { labels: [], datasets: [] };
    live.chart.update();
  }
}

async function refreshLive() {
  if (!state.session || tabs.open !== "live") return;
  if (!$("live-account").value) { // no account (yet) in this organization: nothing of another's stays
    live.generation += 1;
    clearLive();
    return;
  }
  const [seconds, step] = LIVE_RANGES[$("live-range").value];
  const end = Math.floor(Date.now() / 1000 / step) * step;
  const query = new URLSearchParams({
    cloud_account_id: $("live-account").value, query: $("live-query").value,
    start_date: String(end - seconds), end_date: String(end), step: String(step),
  });
  const element = $("live");
  const generation = ++live.generation;
  element.dataset.state = "loading";
  try {
    const answer = await api("GET", orgPath("/k8s_live"), { query });
    if (generation !== live.generation) return;
    renderLive(answer);
    element.dataset.query = query.toString();
    element.dataset.state = "ready";
    const now = new Date();
    $("live-refreshed").textContent = `Last refreshed ${now.toISOString().slice(11, 19)} UTC; again every ${LIVE_REFRESH_MS / 1000} s.`;
    $("live-refreshed").dataset.value = String(now.getTime());
    clearError();
  } catch (error) {
    if (generation === live.generation) element.dataset.state = "error";
    if (state.session) showError(error.message); // the last answer stays on screen, with its time
  }
}

// The value at the range's end; none for a series that stopped before (a pod gone, a node removed).
function liveLatest(points, end) {
  const last = points?.at(-1);
  return last && last[0] === end ? last[1] : null;
}

function renderLive(answer) {
  const groupBy = answer.group_by ?? [];
  const parts = answer.parts ?? [];
  const series = answer.series ?? [];
  live.unit = answer.unit ?? "";
  const keyOf = (s) => groupBy.map((label) => s.labels?.[label] ?? "").join(" / ");
  const noun = `${groupBy.at(-1)}s`;
  const total = answer.series_total ?? series.length;
  const ratio = parts.includes("usage") && parts.includes("request");
  $("live-description").textContent = `${answer.description ?? ""} (${live.unit})${ratio ? `; requests dashed${parts.includes("limit") ? ", limits dotted" : ""}` : ""}.`;
  $("live-count").textContent = series.length < total ? `The ${series.length} largest of ${total} ${noun}.` : `${total} ${noun}.`;
  $("live-count").dataset.value = String(total);

  // The table: each group's latest values, the largest first.
  const latest = (s) => Math.max(...parts.map((part) => liveLatest(s[part], answer.end_date) ?? -Infinity));
  const sorted = [...series].sort((a, b) => latest(b) - latest(a) || keyOf(a).localeCompare(keyOf(b)));
  const head = document.createElement("tr");
  for (const text of [groupBy.join(" / "), ...parts.map((p) => `${p.replace("_", " ")} now`), ...(ratio ? ["usage ÷ request"] : [])]) {
    const th = document.createElement("th");
    th.textContent = text;
    if (head.children.length) th.className = "num";
    head.append(th);
  }
  $("live-table").tHead.replaceChildren(head);
  const rows = sorted.map((s) => {
    const row = document.createElement("tr");
    row.dataset.testid = "live-row";
    row.dataset.key = keyOf(s);
    const name = document.createElement("td");
    name.textContent = keyOf(s);
    row.append(name);
    for (const part of parts) {
      const cell = document.createElement("td");
      cell.className = "num";
      cell.dataset.field = part;
      const value = liveLatest(s[part], answer.end_date);
      cell.textContent = liveValue(value);
      cell.dataset.value = value === null ? "" : String(value);
      row.append(cell);
    }
    if (ratio) {
      const [usage, request] = [liveLatest(s.usage, answer.end_date), liveLatest(s.request, answer.end_date)];
      const cell = document.createElement("td");
      cell.className = "num";
      cell.dataset.field = "ratio";
      cell.textContent = usage !== null && request ? `${Math.round((usage / request) * 100)} %` : "–";
      row.append(cell);
    }
    return row;
  });
  $("live-table").tBodies[0].replaceChildren(...rows);

  if (typeof window.Chart !== "function") return; // the table holds every figure
  const times = [];
  for (let t = answer.start_date; t <= answer.end_date; t += answer.step) times.push(t);
  const index = new Map(times.map((t, i) => [t, i]));
  const datasets = [];
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    for (const part of parts) {
      const data = new Array(times.length).fill(null); // no sample at a point: a gap, not a zero
      for (const [t, value] of s[part] ?? []) if (index.has(t)) data[index.get(t)] = value;
      datasets.push({
        label: parts.length > 1 ? `${keyOf(s)} ${part}` : keyOf(s), data, borderColor: color, backgroundColor: color,
        borderDash: part === "request" ? [6, 4] : part === "limit" ? [2, 3] : [], borderWidth: 1.5, pointRadius: 0, spanGaps: false,
      });
    }
  });
  const data = { labels: times.map((t) => liveTime.format(new Date(t * 1000))), datasets };
  const legend = series.length <= LIVE_LEGEND_MAX;
  if (live.chart) {
    live.chart.data = data;
    live.chart.options.plugins.legend.display = legend;
    live.chart.update();
    return;
  }
  live.chart = new window.Chart($("live-chart"), {
    type: "line",
    data,
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { ticks: { maxTicksLimit: 12 }, title: { display: true, text: "UTC" } },
        y: { beginAtZero: true, grace: "5%", ticks: { callback: (value) => liveValue(value) } },
      },
      plugins: {
        legend: { display: legend, position: "bottom" },
        tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${liveValue(item.raw)}` } },
      },
    },
  });
}

function wireLive() {
  for (const id of ["live-account", "live-query", "live-range"]) $(id).addEventListener("change", () => refreshLive());
  $("org-select").addEventListener("change", () => {
    $("live-account").replaceChildren(); // the other organization's accounts are not asked for
    if (tabs.open === "live") loadLiveAccounts();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshLive(); });
  // Signed out (the dashboard hidden, the tab closed): nothing of the organization stays.
  new MutationObserver(() => {
    if (!$("dashboard").hidden) return;
    $("live-account").replaceChildren();
    clearLive();
  }).observe($("dashboard"), { attributes: true, attributeFilter: ["hidden"] });
}

// ---- wiring -----------------------------------------------------------------------------

function wire() {
  const [start, end] = defaultRange();
  $("start-date").value = start;
  $("end-date").value = end;

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    authenticate("/tokens", formValues(event.target), $("signin-submit"));
  });
  $("signup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    authenticate("/signup", formValues(event.target), $("signup-submit"));
  });
  $("signout").addEventListener("click", () => {
    // Revoked on the server too (DELETE /tokens), not only forgotten by the page, which signs
    // out at once whatever the answer.
    const token = state.session?.token;
    signOut();
    if (token) {
      fetch(new URL(API + "/tokens", location.origin), { method: "DELETE", headers: { Authorization: `Bearer ${token}` } })
        .catch(() => {});
    }
  });
  $("org-select").addEventListener("change", (event) => {
    state.orgId = event.target.value;
    saveSession({ ...state.session, organization_id: state.orgId });
    showOrgName();
    for (const name of FILTERS) $(`filter-${name}`).value = "";
    reloadFilters();
  });
  for (const name of FILTERS) $(`filter-${name}`).addEventListener("change", () => refresh());
  for (const id of ["start-date", "end-date"]) {
    $(id).addEventListener("change", () => { if ($(id).value) reloadFilters(); });
  }
  $("filters-reset").addEventListener("click", () => {
    for (const name of FILTERS) $(`filter-${name}`).value = "";
    refresh();
  });
  $("breakdown-by").addEventListener("change", (event) => {
    state.breakdownBy = event.target.value;
    refresh();
  });
  for (const button of document.querySelectorAll("button.sort")) {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      const same = state.sort.key === key;
      state.sort = { key, order: same ? (state.sort.order === "asc" ? "desc" : "asc") : (key === "name" ? "asc" : "desc") };
      renderPods();
    });
  }
  $("onboard-form").addEventListener("submit", (event) => {
    event.preventDefault();
    onboard(event.target, $("onboard-submit"));
  });
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => navigator.clipboard?.writeText($(button.dataset.copy).textContent));
  }

  chartsAvailable();
  state.session = loadSession();
  if (state.session) enter().catch((error) => showError(error.message));
}

wire();
wireTabs();
wireRightsizing();
wireRecommendations();
wireLive();
