// Line charts drawn on a canvas by the page itself (no library: the studio works offline).
"use strict";

const CHART_COLORS = ["#2f6fdb", "#e8710a", "#1e8e3e", "#9334e6"];

function niceNumber(value) {
  if (value === 0 || Number.isInteger(value)) return String(value);
  const size = Math.abs(value);
  return size >= 100 || size < 0.01 ? value.toExponential(1) : value.toFixed(size >= 10 ? 0 : size >= 1 ? 1 : 3);
}

// series: [{name, points: [[x, y], ...]}]; draws them over shared axes, with a legend.
function drawChart(canvas, series) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = { left: 44, right: 8, top: 18, bottom: 20 };
  context.clearRect(0, 0, width, height);
  context.font = "11px system-ui, sans-serif";
  const points = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  canvas.dataset.points = String(points.length);
  if (!points.length) {
    context.fillStyle = "#667085";
    context.fillText("waiting for the first numbers…", pad.left, height / 2);
    return;
  }
  const xs = points.map(([x]) => x);
  const ys = points.map(([, y]) => y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  context.strokeStyle = "#d9dee7";
  context.fillStyle = "#667085";
  context.beginPath();
  context.moveTo(pad.left, pad.top);
  context.lineTo(pad.left, height - pad.bottom);
  context.lineTo(width - pad.right, height - pad.bottom);
  context.stroke();
  context.fillText(niceNumber(y1), 2, pad.top + 4);
  context.fillText(niceNumber(y0), 2, height - pad.bottom);
  context.fillText(`epoch ${niceNumber(x0)}`, pad.left, height - 4);
  context.fillText(niceNumber(x1), width - pad.right - 30, height - 4);
  series.forEach((s, i) => {
    const color = CHART_COLORS[i % CHART_COLORS.length];
    context.strokeStyle = color;
    context.fillStyle = color;
    context.lineWidth = 1.5;
    context.beginPath();
    s.points.forEach(([x, y], j) => (j ? context.lineTo(px(x), py(y)) : context.moveTo(px(x), py(y))));
    context.stroke();
    if (s.points.length === 1) context.fillRect(px(s.points[0][0]) - 2, py(s.points[0][1]) - 2, 4, 4);
    context.fillText(s.name, pad.left + 8 + i * 70, 12);
  });
}
