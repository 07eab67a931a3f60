// The Train tab: pick a recipe and its few settings, train (a job of the server, in its own
// process), and watch it live: the run's events arrive as server-sent events, from its start,
// so a reloaded page draws the same curves and goes on. Stop saves; Resume continues exactly.
"use strict";

let recipes = null;
let stream = null; // the EventSource of the run shown
let shown = null; // {name, epochs: [...], steps: [...], plan: {...}, progress: {...}}

function seconds(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  return value >= 90 ? `${Math.round(value / 60)} min` : `${Math.max(0, Math.round(value))} s`;
}

function settingInput(setting) {
  const id = `setting-${setting.name}`;
  let input;
  if (Array.isArray(setting.kind)) {
    input = el("select", { attrs: { id, name: setting.name } }, ...setting.kind.map((k) => el("option", { text: k, attrs: { value: k } })));
    input.value = setting.value;
  } else {
    input = el("input", { attrs: { id, name: setting.name, placeholder: "the recipe's default", inputmode: "decimal" } });
    if (setting.value !== null) input.value = setting.value;
  }
  return el("label", { className: "setting" }, el("span", { text: setting.label }), input);
}

function showSettings() {
  const name = document.querySelector("input[name=recipe]:checked").value;
  $("settings").replaceChildren(...recipes[name].settings.map(settingInput));
}

async function showRecipes() {
  if (recipes) return;
  recipes = await api("GET", "/api/recipes");
  $("recipes").replaceChildren(...Object.entries(recipes).map(([name, recipe], i) => el("label", { className: "recipe" },
    el("input", { attrs: Object.assign({ type: "radio", name: "recipe", value: name }, i === 0 ? { checked: "" } : {}) }),
    el("strong", { text: recipe.title }), el("span", { className: "muted", text: recipe.about }))));
  for (const radio of document.querySelectorAll("input[name=recipe]")) radio.addEventListener("change", showSettings);
  showSettings();
}

async function train(event) {
  event.preventDefault();
  $("train-error").hidden = true;
  const recipe = document.querySelector("input[name=recipe]:checked").value;
  const settings = {};
  for (const input of $("settings").querySelectorAll("input, select")) if (input.value !== "") settings[input.name] = input.value;
  try {
    const run = await api("POST", projectUrl("/runs"), { recipe, settings, name: $("run-name").value || undefined });
    $("run-name").value = "";
    await showRuns();
    follow(run.name);
  } catch (error) {
    $("train-error").textContent = error.message;
    $("train-error").hidden = false;
  }
}

function draw() {
  const epochs = shown.epochs;
  const evaluated = epochs.filter((m) => m.val_loss !== undefined);
  const steps = shown.steps;
  const fraction = (s) => s.epoch - 1 + s.step / Math.max(s.steps, 1);
  drawChart($("chart-loss"), [
    { name: "train", points: steps.length ? steps.map((s) => [fraction(s), s.loss]) : epochs.map((m) => [m.epoch, m.train_loss]) },
    { name: "val", points: evaluated.map((m) => [m.epoch, m.val_loss]) }]);
  drawChart($("chart-accuracy"), [
    { name: "train", points: steps.length ? steps.map((s) => [fraction(s), s.accuracy]) : epochs.map((m) => [m.epoch, m.train_accuracy]) },
    { name: "val", points: evaluated.map((m) => [m.epoch, m.val_accuracy]) }]);
  drawChart($("chart-lr"), [{ name: "lr", points: steps.length ? steps.map((s) => [fraction(s), s.lr]) : epochs.map((m) => [m.epoch, m.lr]) }]);
}

function progressLine() {
  const p = shown.progress;
  const last = shown.epochs[shown.epochs.length - 1];
  if (!p && !last) return "starting: loading the photos and the network…";
  if (!p || (last && p.epoch && p.epoch <= last.epoch && p.event !== "step")) {
    const of = shown.plan.epochs ? ` of ${shown.plan.epochs}` : "";
    return `epoch ${last.epoch}${of} · loss ${last.train_loss.toFixed(4)} · accuracy ${percent(last.train_accuracy)}` +
      (last.val_accuracy !== undefined ? ` · val accuracy ${percent(last.val_accuracy)}` : "");
  }
  const parts = [p.epoch ? `epoch ${p.epoch} of ${p.epochs}` : p.phase];
  if (p.steps || p.total) parts.push(`${p.step ?? p.done} of ${p.steps ?? p.total} ${p.unit || "steps"}`);
  if (p.loss !== undefined) parts.push(`loss ${p.loss.toFixed(4)}`);
  if (p.accuracy !== undefined) parts.push(`accuracy ${percent(p.accuracy)}`);
  if (p.eta !== null && p.eta !== undefined) parts.push(`about ${seconds(p.eta)} left`);
  return parts.join(" · ");
}

function onEvent(event) {
  if (event.event === "epoch") {
    shown.epochs.push(event);
    if (shown.progress && shown.progress.event === "progress") shown.progress = null; // the epoch is newer news
  }
  else if (event.event === "step") {
    shown.steps.push(event);
    shown.progress = event;
  } else if (event.event === "progress") shown.progress = event;
  else if (event.event === "start" || event.event === "plan") Object.assign(shown.plan, event);
  else if (event.event === "end") $("live-message").textContent = `finished: best val accuracy ${percent(event.best_accuracy)} (epoch ${event.best_epoch})`;
  else if (event.event === "error") $("live-message").textContent = event.message;
  else if (event.event === "stopped") $("live-message").textContent = `stopped in epoch ${event.epoch}: Resume continues from there`;
  if (["epoch", "step"].includes(event.event)) draw();
  if (shown.progress && shown.progress.epochs) shown.plan.epochs = shown.progress.epochs;
}

function onStatus(status) {
  const job = status.job || {};
  const state = job.state || "unknown";
  $("live-state").textContent = state;
  $("live-state").dataset.state = state;
  $("stop-button").hidden = state !== "running";
  $("resume-button").hidden = !(state === "stopped" || (state === "failed" && shown.epochs.length));
  $("progress-line").textContent = state === "running" ? progressLine() : state === "finished" ? "finished" : job.message || state;
  const fraction = shown.progress && shown.progress.epochs
    ? (shown.progress.epoch - 1 + (shown.progress.step ?? shown.progress.done) / Math.max(shown.progress.steps ?? shown.progress.total ?? 1, 1)) / shown.progress.epochs
    : shown.plan.epochs && shown.epochs.length ? shown.epochs.length / shown.plan.epochs : state === "finished" ? 1 : 0;
  $("progress-fill").style.width = percent(Math.min(fraction, 1));
  if (state !== "running") {
    stream.close();
    if (state === "failed") $("live-message").textContent = job.message;
    showRuns();
  }
}

function follow(name) {
  if (stream) stream.close();
  shown = { name, epochs: [], steps: [], plan: {}, progress: null };
  $("live-title").textContent = name;
  $("live-message").textContent = "";
  $("live-state").textContent = "";
  draw();
  stream = new EventSource(runUrl("/events", name));
  stream.onmessage = (message) => onEvent(JSON.parse(message.data));
  stream.addEventListener("status", (message) => onStatus(JSON.parse(message.data)));
  for (const item of document.querySelectorAll("#run-list li")) item.classList.toggle("active", item.dataset.run === name);
}

async function showRuns() {
  const runs = await api("GET", projectUrl("/runs"));
  $("run-list").replaceChildren(...runs.map((run) => {
    const state = run.job ? run.job.state : "unknown";
    const item = el("li", { attrs: { "data-run": run.name, "data-state": state } },
      el("button", { className: "link", text: run.name, attrs: { type: "button" }, onclick: () => follow(run.name) }),
      el("span", { className: "badge state", text: state, attrs: { "data-state": state } }),
      el("span", { className: "muted", text: run.val_accuracy !== null ? ` val accuracy ${percent(run.val_accuracy)}` : "" }));
    item.classList.toggle("active", shown && shown.name === run.name);
    return item;
  }));
  return runs;
}

async function stopOrResume(action) {
  try {
    await api("POST", runUrl(`/${action}`, shown.name));
    follow(shown.name);
    await showRuns();
  } catch (error) {
    notice(error.message);
  }
}

Studio.tab("runs", {
  async show() {
    await showRecipes();
    const runs = await showRuns();
    const running = runs.find((run) => run.job && run.job.state === "running");
    const name = running ? running.name : shown && runs.some((run) => run.name === shown.name) ? shown.name : runs[0]?.name;
    if (name) follow(name);
  },
  hide() {
    if (stream) stream.close();
  },
});

document.addEventListener("DOMContentLoaded", () => {
  $("train-form").addEventListener("submit", train);
  $("stop-button").addEventListener("click", () => stopOrResume("stop"));
  $("resume-button").addEventListener("click", () => stopOrResume("resume"));
});
