// The Recommendations tab's and the anomaly marks' pure parts: no DOM and no fetch, so
// tests/test_dashboard_files.py imports this module in node and checks them on their own.
//
// An item is one entry of GET /organizations/{id}/optimizations' `optimizations.<module>.items`:
// its module's own fields (`evidence`, `insufficient`, …), then OptScale's. Formatters are
// passed in (app.js owns them): `fmt` = {money, millicores, mebibytes, share, day}, day taking
// Unix seconds.

export const ANOMALIES = "k8s_cost_anomalies";

// The modules in the order the tab shows them, with what each recommends.
export const MODULES = [
  ["k8s_rightsizing", "Container rightsizing", "containers requesting more than they use (the rightsizing job)"],
  ["k8s_cluster_rightsizing", "Cluster rightsizing", "the cheapest node plan that packs the pods (bin packing)"],
  ["k8s_spot_instances", "Spot instances", "workloads ready to run on spot nodes, at the spot discount"],
  [ANOMALIES, "Cost anomalies", "days departing from their weekday-aware baseline: money spent, saving 0"],
];

const DAY = 86400;

export function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function signedMoney(value, fmt) {
  return `${value >= 0 ? "+" : "−"}${fmt.money(Math.abs(value))}`;
}

// A day range as the page shows it: one day, or first – last.
export function days(start, end, fmt) {
  return start === end ? fmt.day(start) : `${fmt.day(start)} – ${fmt.day(end)}`;
}

// One line saying why an item is recommended, from its module's fields.
export function evidence(item, fmt) {
  if (item.insufficient) {
    return item.needed_days ? `${item.insufficient} (needs ${item.needed_days})` : item.insufficient;
  }
  switch (item.module) {
    case "k8s_rightsizing": {
      const run = item.evidence ?? {};
      const workload = item.controller ? `${item.namespace}/${item.controller_kind}/${item.controller}` : `${item.namespace}/pod/${item.pod}`;
      return `${workload} ${item.container}: CPU ${fmt.millicores(item.current_cpu_cores)} → ${fmt.millicores(item.recommended_cpu_cores)}, `
        + `memory ${fmt.mebibytes(item.current_memory_bytes)} → ${fmt.mebibytes(item.recommended_memory_bytes)}, `
        + `efficiency ${fmt.share(item.total_efficiency)}, ${item.replicas} replicas`
        + (run.window_days ? `; over ${run.window_days} days of usage` : "");
    }
    case "k8s_cluster_rightsizing": {
      const plan = (item.evidence?.plans ?? []).find((p) => p.profile === item.profile);
      return `${item.current_nodes} → ${item.planned_nodes} nodes at the ${item.profile} profile`
        + (plan ? ` (target ${fmt.share(plan.target_utilization)}, at least ${plan.min_nodes}): `
          + `${fmt.money(plan.current_monthly_cost)} → ${fmt.money(plan.monthly_cost)} a month` : "")
        + (item.evidence?.pods !== undefined ? `; ${item.evidence.pods} pods packed` : "");
    }
    case "k8s_spot_instances":
      return `${item.controller_kind}/${item.controller} in ${item.k8s_namespace}: ${item.replicas} replicas, `
        + `verdict "${item.rule}", on ${(item.nodes ?? []).join(", ")}`
        + (item.monthly_cost === null || item.monthly_cost === undefined ? "" : `; ${fmt.money(item.monthly_cost)} a month on demand`);
    case ANOMALIES: {
      const peak = item.evidence ?? {};
      const change = peak.relative_change === null || peak.relative_change === undefined
        ? "" : ` (${peak.relative_change >= 0 ? "+" : ""}${Math.round(peak.relative_change * 100)} %)`;
      const parts = (peak.explained_by ?? []).map((c) => `${c.name} ${signedMoney(c.cost - c.baseline, fmt)}`);
      return `${item.direction} on ${days(item.start, item.end, fmt)} (${plural(item.days, "day")}), ${signedMoney(item.excess_cost, fmt)} `
        + `against the baseline; peak ${fmt.day(peak.peak_day)}: ${fmt.money(peak.cost)} for ${fmt.money(peak.baseline)} expected${change}`
        + (parts.length ? `; explained by ${parts.join(", ")}` : "");
    }
    default:
      return "";
  }
}

// Where an item applies: its cluster, and namespace when it has one.
export function where(item) {
  const cluster = item.k8s_cluster ?? item.cluster ?? "";
  const namespace = item.k8s_namespace ?? item.namespace ?? null;
  return namespace ? `${cluster} / ${namespace}` : cluster;
}

// The anomalies to mark on a daily chart over ``chartDays`` (its bars' day starts, in order),
// under the cost filters set (``filters``: k8s_cluster and k8s_namespace, "" for all): an
// anomaly marks every day of [start, end] the chart has. A cluster's anomaly is marked when
// no namespace is chosen (a namespace's own series is what the chart then shows); an item
// saying "insufficient history" has no days. → [{day, index, items}], by day.
export function anomalyMarks(items, chartDays, filters) {
  const index = new Map(chartDays.map((day, i) => [day, i]));
  const marks = new Map();
  for (const item of items) {
    if (item.insufficient || typeof item.start !== "number" || typeof item.end !== "number") continue;
    if (filters.k8s_cluster && item.k8s_cluster !== filters.k8s_cluster) continue;
    if (filters.k8s_namespace ? item.k8s_namespace !== filters.k8s_namespace : item.k8s_namespace) continue;
    for (let day = item.start; day <= item.end; day += DAY) {
      if (!index.has(day)) continue;
      const mark = marks.get(day) ?? { day, index: index.get(day), items: [] };
      mark.items.push(item);
      marks.set(day, mark);
    }
  }
  return [...marks.values()].sort((a, b) => a.day - b.day);
}

export const MARK_COLOR = "#d62728";
const MARK_SIZE = 10; // css px of the square drawn above a marked day

// A Chart.js plugin drawing ``chart.$anomalyMarks`` (anomalyMarks' answer) over a category
// chart: a translucent band over the day and a solid square at the top of the plot. What it
// drew is recorded on the canvas (data-anomaly-marks: each mark's day and the square's
// centre in canvas pixels), so a test can look at those pixels.
export const anomalyPlugin = {
  id: "anomalyMarks",
  afterDatasetsDraw(chart) {
    const marks = chart.$anomalyMarks ?? [];
    const { ctx, chartArea, scales } = chart;
    const count = chart.data.labels?.length ?? 0;
    const drawn = [];
    if (count && scales.x) {
      const width = (chartArea.right - chartArea.left) / count;
      const ratio = chart.currentDevicePixelRatio ?? 1;
      ctx.save();
      for (const mark of marks) {
        const x = scales.x.getPixelForValue(mark.index);
        ctx.fillStyle = "rgba(214, 39, 40, 0.12)";
        ctx.fillRect(x - width / 2, chartArea.top, width, chartArea.bottom - chartArea.top);
        ctx.fillStyle = MARK_COLOR;
        ctx.fillRect(x - MARK_SIZE / 2, chartArea.top, MARK_SIZE, MARK_SIZE);
        drawn.push({ day: mark.day, x: Math.round(x * ratio), y: Math.round((chartArea.top + MARK_SIZE / 2) * ratio) });
      }
      ctx.restore();
    }
    chart.canvas.dataset.anomalyMarks = JSON.stringify(drawn);
  },
};
