// Bar charts as inline SVG, each with a caption, a text summary and the numbers as a table.

import { formatNumber, h, svg } from "./dom.js";

const DEFAULT_WIDTH = 640;
const HEIGHT = 220;
const PAD = { top: 12, right: 8, bottom: 28, left: 48 };

/** A "nice" upper bound for the y axis: 1, 2 or 5 times a power of ten, at least `max`. */
function niceCeiling(max) {
  if (max <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= max) return step * power;
  }
  return 10 * power;
}

/**
 * Draw a (grouped) bar chart into `figure`, as wide as the figure is (so text keeps its size).
 * buckets: [{label, short}] on the x axis; series: [{name, one?, values: number[]}], a value per
 * bucket (`one` names a single unit: "1 session").
 * `labelEvery` thins the x labels; `note` is shown when there is nothing to draw.
 */
export function barChart(figure, { title, buckets, series, labelEvery = 1, note }) {
  const style = getComputedStyle(figure);
  const inner = figure.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const WIDTH = Math.max(300, Math.round(inner) || DEFAULT_WIDTH);
  const totals = series.map((s) => s.values.reduce((sum, v) => sum + v, 0));
  const total = totals.reduce((sum, v) => sum + v, 0);
  const top = niceCeiling(Math.max(0, ...series.flatMap((s) => s.values)));
  // Counts are whole numbers: no tick halfway between 0 and 1.
  const ticks = top / 2 === Math.round(top / 2) ? [0, 0.5, 1] : [0, 1];
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotWidth / Math.max(1, buckets.length);
  const barWidth = Math.max(1, (slot * 0.8) / Math.max(1, series.length));
  const y = (value) => PAD.top + plotHeight - (value / top) * plotHeight;
  const titleId = `${figure.id}-title`;
  const summaryId = `${figure.id}-summary`;
  const summary = series.length
    ? `In total: ${series.map((s, i) => `${formatNumber(totals[i])} ${totals[i] === 1 && s.one ? s.one : s.name}`).join(", ")}.`
    : "";

  const grid = ticks.map((fraction) => {
    const value = top * fraction;
    return svg(
      "g",
      { class: "grid" },
      svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value) }),
      svg("text", { x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end" }, formatNumber(value)),
    );
  });
  const bars = buckets.flatMap((bucket, b) =>
    series.map((s, i) => {
      const value = s.values[b];
      const height = Math.max(value > 0 ? 1 : 0, y(0) - y(value));
      return svg(
        "rect",
        {
          class: `bar series-${i}`,
          x: PAD.left + b * slot + slot * 0.1 + i * barWidth,
          y: y(0) - height,
          width: barWidth,
          height,
        },
        svg("title", {}, `${bucket.label}: ${formatNumber(value)} ${s.name}`),
      );
    }),
  );
  // The latest bucket always has its label, kept inside the chart at the right edge.
  const labels = buckets.map((bucket, b) => {
    if ((buckets.length - 1 - b) % labelEvery !== 0) return null;
    const last = b === buckets.length - 1;
    const x = last ? WIDTH - PAD.right : PAD.left + b * slot + slot / 2;
    return svg("text", { class: "x-label", x, y: HEIGHT - 8, "text-anchor": last ? "end" : "middle" }, bucket.short);
  });

  figure.dataset.total = String(total);
  const parts = [
    h("figcaption", { id: titleId }, title),
    series.length > 1
      ? h(
          "ul",
          { class: "legend", "aria-hidden": "true" },
          series.map((s, i) => h("li", {}, h("span", { class: `swatch series-${i}` }), s.name)),
        )
      : null,
    svg(
      "svg",
      {
        viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
        role: "img",
        "aria-labelledby": titleId,
        "aria-describedby": summaryId,
        preserveAspectRatio: "xMidYMid meet",
      },
      svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(0), y2: y(0) }),
      grid,
      bars,
      labels,
    ),
    h("p", { id: summaryId, class: "chart-summary" }, total > 0 || !note ? summary : note),
    h(
      "details",
      { class: "chart-data" },
      h("summary", {}, "Show the numbers"),
      h(
        "table",
        {},
        h("caption", { class: "visually-hidden" }, title),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Period"), series.map((s) => h("th", { scope: "col" }, s.name)))),
        h(
          "tbody",
          {},
          buckets.map((bucket, b) =>
            h("tr", {}, h("th", { scope: "row" }, bucket.label), series.map((s) => h("td", {}, formatNumber(s.values[b])))),
          ),
        ),
      ),
    ),
  ];
  figure.replaceChildren(...parts.filter(Boolean));
}

/** A small line of recent values (for live counters), drawn into `container`. */
export function sparkline(container, values, label) {
  const width = 120;
  const height = 28;
  const top = niceCeiling(Math.max(1, ...values));
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values
    .map((value, i) => `${(i * step).toFixed(1)},${(height - 2 - (value / top) * (height - 4)).toFixed(1)}`)
    .join(" ");
  container.replaceChildren(
    svg(
      "svg",
      { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label },
      svg("polyline", { class: "spark-line", points, fill: "none" }),
    ),
  );
}
