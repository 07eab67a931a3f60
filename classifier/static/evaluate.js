// The Evaluate tab: how good the chosen run's model is, on the photos it was checked on during
// training (val) and on the test photos: the confusion matrix (a click on a number shows its
// photos), precision and recall per class, the reliability diagram with the calibration error,
// and the cross-validation estimate when the folder is small.
"use strict";

function confusionTable(table, result, photosBox, set) {
  const classes = result.classes;
  const head = el("tr", {}, el("th", { text: "photo's class \\ said" }), ...classes.map((c) => el("th", { text: c })));
  const rows = result.confusion.map((row, i) => el("tr", {}, el("th", { text: classes[i] }), ...row.map((count, j) => {
    const cell = el("td", { className: i === j ? "right" : count ? "wrong" : "", attrs: { "data-true": classes[i], "data-said": classes[j] } });
    const button = el("button", { className: "link", text: String(count), attrs: { type: "button" } });
    button.addEventListener("click", () => showCell(photosBox, result.cells[i][j], `${classes[i]} photos the model called ${classes[j]}`, set));
    cell.append(button);
    return cell;
  })));
  table.replaceChildren(head, ...rows);
}

function showCell(box, paths, title, set) {
  box.replaceChildren(el("h3", { text: `${title} (${paths.length})` }), el("div", { className: "thumbs" },
    ...paths.map((path) => el("figure", { className: "tile", attrs: { "data-path": path } }, thumbnail(path, set), el("figcaption", { text: path })))));
}

function perClassTable(result) {
  const head = el("tr", {}, ...["class", "precision", "recall", "photos"].map((h) => el("th", { text: h })));
  const rows = Object.entries(result.per_class).map(([name, s]) => el("tr", {},
    el("td", { text: name }), el("td", { text: percent(s.precision) }), el("td", { text: percent(s.recall) }), el("td", { text: s.support })));
  $("per-class").replaceChildren(head, ...rows);
}

function drawReliability(canvas, bins) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const pad = 30;
  const side = Math.min(width, height) - 2 * pad;
  context.clearRect(0, 0, width, height);
  context.strokeStyle = "#999";
  context.setLineDash([4, 4]);
  context.beginPath();
  context.moveTo(pad, pad + side);
  context.lineTo(pad + side, pad);
  context.stroke();
  context.setLineDash([]);
  context.fillStyle = "#2f6fdb";
  for (const bin of bins) {
    const x = pad + bin.low * side;
    const w = (bin.high - bin.low) * side - 1;
    context.fillRect(x, pad + side - bin.accuracy * side, w, bin.accuracy * side);
  }
  context.fillStyle = "#667085";
  context.font = "11px system-ui, sans-serif";
  context.fillText("how sure it said it was →", pad, height - 6);
  context.fillText("how often right", 2, pad - 8);
  canvas.dataset.bins = String(bins.length);
}

function showCrossValidation(cv) {
  const box = $("cross-validation");
  box.hidden = !cv;
  if (!cv) return;
  box.replaceChildren(el("h2", { text: "Cross-validation estimate" }),
    el("p", { text: `${percent(cv.accuracy)} of ${cv.photos} photos answered right by models that never saw them ` +
      `(${cv.folds} folds, from ${percent(Math.min(...cv.per_fold), 0)} to ${percent(Math.max(...cv.per_fold), 0)}): ` +
      "with few photos a class, a better estimate than the few val photos." }));
}

function showTest(result) {
  $("test-status").textContent = result ? `${percent(result.accuracy)} right on ${result.images} test photos` +
    (result.skipped && result.skipped.length ? `; ${result.skipped.length} unreadable` : "") : "";
  if (result) confusionTable($("test-confusion"), result, $("test-cell-photos"), "test");
  else $("test-confusion").replaceChildren();
}

async function showEvaluation() {
  $("evaluation").hidden = true;
  $("cell-photos").replaceChildren();
  $("test-cell-photos").replaceChildren();
  if (!Studio.run) {
    $("evaluate-status").textContent = "no trained model yet: train one in the Train tab";
    return;
  }
  $("evaluate-status").textContent = "reading the run…";
  let result;
  try {
    result = await api("GET", runUrl("/evaluation"));
  } catch (error) {
    $("evaluate-status").textContent = error.message;
    return;
  }
  $("evaluate-status").textContent = "";
  $("evaluation").hidden = false;
  $("evaluate-facts").replaceChildren(
    el("div", {}, el("strong", { text: percent(result.accuracy) }), el("span", { text: ` right on ${result.images} val photos` })),
    el("div", {}, el("span", { text: `best epoch ${result.best_epoch} of ${result.epochs}` })));
  confusionTable($("confusion"), result, $("cell-photos"), "photos");
  perClassTable(result);
  drawReliability($("reliability"), result.reliability_calibrated.bins);
  $("calibration").textContent = `calibration error ${percent(result.reliability_calibrated.ece)} ` +
    `(${percent(result.reliability.ece)} before the temperature ${result.temperature.toFixed(2)} was fitted)`;
  showCrossValidation(result.cross_validation);
  showTest(result.test_evaluation);
  $("test-button").disabled = !Studio.project.test_classes.some((c) => c.photos);
}

Studio.tab("evaluate", { show: showEvaluation });

document.addEventListener("DOMContentLoaded", () => {
  $("test-button").addEventListener("click", async () => {
    $("test-status").textContent = "testing…";
    try {
      showTest(await api("POST", runUrl("/test")));
    } catch (error) {
      $("test-status").textContent = error.message;
    }
  });
});
