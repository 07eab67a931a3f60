// The page: photos in, one card each with the network's answer. Everything a user or the
// server supplies is shown with textContent, never parsed as HTML.
"use strict";

const IN_FLIGHT = 4; // photos sent at once; each goes alone, so a big drop never hits the upload limit
let info = null; // the model card, once /info has answered
let infoReady = Promise.resolve();

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function neitherRule(neither) {
  if (!neither) return "none";
  if (neither.method === "imagenet") return "no ImageNet cat or dog class in the top five";
  return `${neither.method} score below ${neither.threshold.toFixed(3)}`;
}

function when(timestamp) {
  const date = new Date(timestamp);
  return isNaN(date) ? timestamp : date.toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function showModelCard(card) {
  const rows = [
    ["model", `${card.model} (${card.checkpoint})`],
    ["classes", card.classes.join(", ")],
    ["image size", `${card.image_size} px, ${card.resize}` + (card.tta ? `, TTA ${[card.image_size, ...card.tta_sizes].join(" + ")} px + mirror` : "")],
    ["val accuracy", card.val_accuracy == null ? "unknown" : percent(card.val_accuracy) + (card.epoch ? ` (epoch ${card.epoch})` : "")],
    ["temperature", card.temperature.toFixed(3)],
    ["neither rule", neitherRule(card.neither)],
    ["trained", when(card.trained_at)],
    ["trained on", card.trained_on || "unknown"],
  ];
  const list = document.createElement("dl");
  for (const [name, value] of rows) {
    const pair = document.createElement("div");
    const term = document.createElement("dt");
    const text = document.createElement("dd");
    term.textContent = name;
    text.textContent = value;
    pair.append(term, text);
    list.append(pair);
  }
  document.getElementById("model-card").replaceChildren(list);
}

async function post(file, explain) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch("/predict" + (explain ? "?explain=1" : ""), { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body[0];
}

function newCard(file) {
  const card = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = file.name;
  card.querySelector(".thumb").src = URL.createObjectURL(file);
  document.getElementById("cards").append(card);
  return card;
}

function showError(card, message) {
  card.querySelector(".label").textContent = "unreadable";
  const error = card.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
  card.dataset.state = "error";
}

function showResult(card, result) {
  if (result.error) return showError(card, result.error);
  card.querySelector(".label").textContent = result.label;
  card.querySelector(".badge").hidden = !result.neither;
  const bars = card.querySelector(".bars");
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("li");
    row.dataset.class = name;
    row.dataset.probability = String(p);
    const label = document.createElement("span");
    const bar = document.createElement("div");
    const fill = document.createElement("div");
    const value = document.createElement("span");
    label.textContent = name;
    bar.className = "bar";
    fill.className = "fill";
    fill.style.width = percent(p);
    value.className = "value";
    value.textContent = percent(p);
    bar.append(fill);
    row.append(label, bar, value);
    bars.append(row);
  }
  card.querySelector(".toggle").hidden = !info || !info.explainable;
  card.dataset.state = "done";
}

async function toggleHeatmap(card, file) {
  const button = card.querySelector(".toggle");
  const heatmap = card.querySelector(".heatmap");
  const showing = button.getAttribute("aria-pressed") === "true";
  if (!showing && !heatmap.getAttribute("src")) {
    button.disabled = true;
    try {
      heatmap.src = (await post(file, true)).heatmap;
    } catch (error) {
      return showError(card, error.message);
    } finally {
      button.disabled = false;
    }
  }
  button.setAttribute("aria-pressed", String(!showing));
  heatmap.hidden = showing;
  card.querySelector(".thumb").hidden = !showing;
}

async function classify(file) {
  const card = newCard(file);
  card.querySelector(".toggle").addEventListener("click", () => toggleHeatmap(card, file));
  try {
    const result = await post(file, false);
    await infoReady; // the card's heatmap toggle depends on whether the model can explain
    showResult(card, result);
  } catch (error) {
    showError(card, error.message);
  }
}

async function classifyAll(files) {
  const queue = Array.from(files);
  const status = document.getElementById("status");
  status.textContent = `classifying ${queue.length} photo(s)…`;
  const worker = async () => {
    while (queue.length) await classify(queue.shift());
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  status.textContent = "";
}

function setUp() {
  const input = document.getElementById("files");
  const drop = document.getElementById("drop");
  input.addEventListener("change", () => {
    classifyAll(input.files);
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classifyAll(event.dataTransfer.files);
  });
  infoReady = fetch("/info")
    .then((response) => response.json())
    .then((card) => {
      info = card;
      showModelCard(card);
    })
    .catch((error) => {
      document.getElementById("model-card").textContent = "could not load the model card: " + error.message;
    });
}

setUp();
