// Line charts of a job's per-step metrics (uPlot, vendored under /ui/vendor/uplot).
import uPlot from "./vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea"];

function axisValue(v) {
  if (v === 0 || v === null) return "0";
  const a = Math.abs(v);
  if (a < 0.01) return v.toExponential(1);
  if (a >= 1000) return Math.round(v).toLocaleString("en");
  return String(+v.toPrecision(3));
}

/**
 * A chart of `series` ([{label, key}]) over `step`; returns {el, update(points)} where
 * points are the metrics events' data, in step order.
 */
export function lineChart(title, series, id) {
  const el = h("figure", { class: "chart", id, "data-points": "0" }, h("figcaption", {}, title));
  const plotBox = h("div", { class: "plot" });
  el.append(plotBox);
  let plot = null;
  let count = 0;
  function update(points) {
    const x = [];
    const ys = series.map(() => []);
    for (const p of points) {
      if (series.every((s) => p[s.key] === undefined || p[s.key] === null)) continue;
      x.push(p.step);
      series.forEach((s, i) => ys[i].push(p[s.key] ?? null));
    }
    if (x.length === count) return;
    count = x.length;
    el.dataset.points = String(count);
    // Points per series ("32,3": every step has a train loss, three have a valid loss).
    el.dataset.series = ys.map((y) => y.filter((v) => v !== null).length).join(",");
    const data = [x, ...ys];
    if (plot === null) {
      plot = new uPlot(
        {
          width: 420,
          height: 200,
          scales: { x: { time: false } },
          axes: [{ label: "step" }, { size: 70, values: (u, splits) => splits.map(axisValue) }],
          series: [
            { label: "step" },
            ...series.map((s, i) => ({
              label: s.label,
              stroke: COLORS[i % COLORS.length],
              width: 2,
              spanGaps: true,
              points: { show: x.length < 40 },
            })),
          ],
        },
        data,
        plotBox,
      );
    } else {
      plot.setData(data);
    }
  }
  return { el, update, destroy: () => plot && plot.destroy() };
}
