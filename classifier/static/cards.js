// A photo's answer as a card, on the serve page and in the studio's Try it tab: the label, a bar
// per class, the "neither" answer in plain words, and where the network looked. Everything a
// user or the server supplies is shown with textContent, never parsed as HTML.
"use strict";

function percent(p, digits = 1) {
  return p === null || p === undefined ? "–" : (100 * p).toFixed(digits) + "%";
}

// "neither" in words: "not a cat or a dog", "none of: apple, pear, plum"
function neitherWords(classes) {
  const article = (name) => (/^[aeiou]/i.test(name) ? "an " : "a ") + name;
  if (classes.length === 2) return `not ${article(classes[0])} or ${article(classes[1])}`;
  return "none of: " + classes.join(", ");
}

function showBars(list, probabilities) {
  list.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
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
    list.append(row);
  }
}

function newCard(file, container) {
  const card = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = file.name;
  card.querySelector(".thumb").src = URL.createObjectURL(file);
  container.append(card);
  return card;
}

function showError(card, message) {
  card.querySelector(".label").textContent = "unreadable";
  const error = card.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
  card.dataset.state = "error";
}

function showResult(card, result, explainable) {
  if (result.error) return showError(card, result.error);
  const classes = Object.keys(result.probabilities);
  card.querySelector(".label").textContent = result.label;
  card.querySelector(".badge").hidden = !result.neither;
  card.querySelector(".badge").textContent = neitherWords(classes);
  card.dataset.label = result.label;
  showBars(card.querySelector(".bars"), result.probabilities);
  card.querySelector(".toggle").hidden = !explainable;
  card.dataset.state = "done";
}

// Show the Grad-CAM heatmap instead of the photo, or back; heatmap() gives its data URL, asked once.
async function toggleHeatmap(card, heatmap) {
  const button = card.querySelector(".toggle");
  const image = card.querySelector(".heatmap");
  const showing = button.getAttribute("aria-pressed") === "true";
  if (!showing && !image.getAttribute("src")) {
    button.disabled = true;
    try {
      image.src = await heatmap();
    } catch (error) {
      return showError(card, error.message);
    } finally {
      button.disabled = false;
    }
  }
  button.setAttribute("aria-pressed", String(!showing));
  image.hidden = showing;
  card.querySelector(".thumb").hidden = !showing;
}

// POST one photo to `url` (serve's /predict, or a run's); its answer.
async function predictOne(url, file, explain) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch(url + (explain ? "?explain=1" : ""), { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body[0];
}
