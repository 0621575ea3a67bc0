// Usage: the tenant's meters as charts (tokens per day, requests per hour, sessions per day),
// the token quota of the period and the rate-limit headroom, all from GET /v1/usage.

import { ApiError, json, showError } from "./api.js";
import { barChart } from "./charts.js";
import { byId, every, formatDate, formatNumber } from "./dom.js";

const DAYS = 14;
const HOURS = 24;
const REFRESH_MS = 10000;
const dayLabel = new Intl.DateTimeFormat("en", { weekday: "short", month: "short", day: "numeric" });
const dayShort = new Intl.DateTimeFormat("en", { month: "short", day: "numeric" });
const hourLabel = new Intl.DateTimeFormat("en", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
const hourShort = new Intl.DateTimeFormat("en", { hour: "2-digit", minute: "2-digit" });
const timeFormat = new Intl.DateTimeFormat("en", { timeStyle: "medium" });

/** RFC 3339 without milliseconds (the API wants whole minutes). */
function rfc3339(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function localTimeZone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}

/** Windows from `start`, `count` of them, each `next(date)` after the previous. */
function windows(start, count, next) {
  const result = [];
  let at = new Date(start);
  for (let i = 0; i < count; i += 1) {
    result.push(at);
    at = next(at);
  }
  return result;
}

/** Sum a meter's rows (all groups) into the given windows, matched by window start. */
function valuesOf(usage, slug, starts) {
  const meter = usage.meters.find((m) => m.slug === slug);
  const values = starts.map(() => 0);
  if (!meter) return null;
  const index = new Map(starts.map((start, i) => [start.getTime(), i]));
  for (const row of meter.data) {
    const i = index.get(new Date(row.window_start).getTime());
    if (i !== undefined) values[i] += Number(row.value) || 0;
  }
  return values;
}

export function createUsage() {
  const el = {
    error: byId("usage-error"),
    updated: byId("usage-updated"),
    refresh: byId("usage-refresh"),
    quotaBar: byId("quota-bar"),
    quotaText: byId("quota-text"),
    quotaPeriod: byId("quota-period"),
    rateBar: byId("rate-bar"),
    rateText: byId("rate-text"),
    rateReset: byId("rate-reset"),
    tokens: byId("chart-tokens"),
    requests: byId("chart-requests"),
    sessions: byId("chart-sessions"),
  };
  let timeZone = localTimeZone();
  let stopPolling = null;
  let inFlight = false;
  let redraw = null; // the last charts, drawn again when the window is resized

  async function query(params) {
    const search = new URLSearchParams({ ...params, windowTimeZone: timeZone });
    try {
      return await json(`/v1/usage?${search}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 422 && timeZone !== "UTC") {
        timeZone = "UTC"; // a zone the server does not know: fall back to UTC windows
        return query(params);
      }
      throw error;
    }
  }

  async function load() {
    if (inFlight) return;
    inFlight = true;
    try {
      const now = new Date();
      const firstDay = new Date(now.getFullYear(), now.getMonth(), now.getDate() - (DAYS - 1));
      const firstHour = new Date(now);
      firstHour.setMinutes(0, 0, 0);
      firstHour.setHours(firstHour.getHours() - (HOURS - 1));
      const [daily, hourly] = await Promise.all([
        query({ windowSize: "DAY", from: rfc3339(firstDay) }),
        query({ windowSize: "HOUR", from: rfc3339(firstHour) }),
      ]);
      showError(el.error, null);
      renderQuota(hourly.quota);
      renderRate(hourly.rate_limit);
      redraw = () => renderCharts(daily, hourly, firstDay, firstHour);
      redraw();
      el.updated.textContent = `Updated ${timeFormat.format(new Date())}`;
    } catch (error) {
      showError(el.error, error);
    } finally {
      inFlight = false;
    }
  }

  function renderQuota(quota) {
    const used = quota.used;
    if (quota.limit === null || quota.limit === undefined) {
      el.quotaBar.max = 1;
      el.quotaBar.value = 0;
      el.quotaText.textContent = `${formatNumber(used)} tokens used: the plan has no token limit.`;
    } else {
      const share = quota.limit > 0 ? (100 * used) / quota.limit : 100;
      el.quotaBar.max = Math.max(1, quota.limit);
      el.quotaBar.value = Math.min(used, quota.limit);
      el.quotaBar.classList.toggle("over", share >= 90);
      el.quotaText.textContent =
        `${formatNumber(used)} of ${formatNumber(quota.limit)} tokens used ` +
        `(${share < 1 && used > 0 ? "<1" : Math.round(share)}%), ${formatNumber(quota.remaining ?? 0)} left.`;
    }
    el.quotaText.dataset.used = String(used);
    el.quotaPeriod.textContent =
      `Period ${formatDate(quota.period_start)} to ${formatDate(quota.period_end)}; renews ${formatDate(quota.period_end)}.`;
  }

  function renderRate(rate) {
    if (!rate) {
      el.rateText.textContent = "No rate-limit window reported.";
      el.rateReset.textContent = "";
      return;
    }
    el.rateBar.max = Math.max(1, rate.limit);
    el.rateBar.value = rate.remaining;
    el.rateBar.classList.toggle("over", rate.remaining < rate.limit * 0.1);
    el.rateText.textContent = `${formatNumber(rate.remaining)} of ${formatNumber(rate.limit)} requests left this minute.`;
    const reset = new Date(rate.reset);
    const seconds = Math.max(0, Math.round((reset - Date.now()) / 1000));
    el.rateReset.textContent = `The window resets at ${timeFormat.format(reset)} (in ${seconds} s).`;
  }

  function renderCharts(daily, hourly, firstDay, firstHour) {
    const days = windows(firstDay, DAYS, (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate() + 1));
    const hours = windows(firstHour, HOURS, (d) => new Date(d.getTime() + 3600000));
    const dayBuckets = days.map((d) => ({ label: dayLabel.format(d), short: dayShort.format(d) }));
    const hourBuckets = hours.map((d) => ({ label: hourLabel.format(d), short: hourShort.format(d) }));
    const missing = (slug) => `The meter "${slug}" is not configured on this server.`;

    const tokensIn = valuesOf(daily, "llm_tokens_in", days);
    const tokensOut = valuesOf(daily, "llm_tokens_out", days);
    barChart(el.tokens, {
      title: `Tokens per day, last ${DAYS} days`,
      buckets: dayBuckets,
      series: [
        ...(tokensIn ? [{ name: "tokens in", values: tokensIn }] : []),
        ...(tokensOut ? [{ name: "tokens out", values: tokensOut }] : []),
      ],
      labelEvery: 2,
      note: tokensIn || tokensOut ? "No tokens used in these days yet." : missing("llm_tokens_in"),
    });
    const requests = valuesOf(hourly, "api_requests", hours);
    barChart(el.requests, {
      title: `API requests per hour, last ${HOURS} hours`,
      buckets: hourBuckets,
      series: requests ? [{ name: "requests", one: "request", values: requests }] : [],
      labelEvery: 4,
      note: requests ? "No requests in these hours yet." : missing("api_requests"),
    });
    const sessions = valuesOf(daily, "session_count", days);
    barChart(el.sessions, {
      title: `Sessions created per day, last ${DAYS} days`,
      buckets: dayBuckets,
      series: sessions ? [{ name: "sessions", one: "session", values: sessions }] : [],
      labelEvery: 2,
      note: sessions ? "No sessions created in these days yet." : missing("session_count"),
    });
  }

  el.refresh.addEventListener("click", () => load());
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => stopPolling && redraw?.(), 150);
  });

  return {
    show() {
      stopPolling?.();
      stopPolling = every(REFRESH_MS, load);
    },
    hide() {
      stopPolling?.();
      stopPolling = null;
    },
    reset() {
      this.hide();
      redraw = null;
      showError(el.error, null);
      el.updated.textContent = "";
      for (const chart of [el.tokens, el.requests, el.sessions]) chart.replaceChildren();
    },
  };
}
