// The serve page: photos in, one card each with the network's answer (cards.js). Everything a
// user or the server supplies is shown with textContent, never parsed as HTML.
"use strict";

const IN_FLIGHT = 4; // photos sent at once; each goes alone, so a big drop never hits the upload limit
let info = null; // the model card, once /info has answered
let infoReady = Promise.resolve();

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
  return predictOne("/predict", file, explain);
}

async function classify(file) {
  const card = newCard(file, document.getElementById("cards"));
  card.querySelector(".toggle").addEventListener("click", () => toggleHeatmap(card, async () => (await post(file, true)).heatmap));
  try {
    const result = await post(file, false);
    await infoReady; // the card's heatmap toggle depends on whether the model can explain
    showResult(card, result, info && info.explainable);
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
