// The Learn tab: a network learning on the project's photos, redrawn after every step.
// Everything the server sends is shown with textContent or as an image source, never as HTML.
"use strict";

(() => {
  const root = document.getElementById("learn");
  const $ = (id) => document.getElementById(`learn-${id}`); // this tab's elements
  const errors = []; // the error at each iteration, for the chart
  let playing = false;
  let busy = false;

  function say(text, problem = false) {
    $("status").textContent = text;
    $("status").classList.toggle("problem", problem);
  }

  const call = (path, body) => api(body === undefined ? "GET" : "POST", projectUrl(`/learn${path}`), body);

  const fmt = (value, digits = 4) => (value === null ? "not a number" : Number(value).toPrecision(digits));

  // ----------------------------------------------------------------- settings

  function chosenModel() {
    return root.querySelector('input[name="model"]:checked').value;
  }

  function showModelFields() {
    for (const label of root.querySelectorAll("[data-for]")) {
      label.hidden = label.dataset.for !== chosenModel();
    }
  }

  function sizes(text) {
    return text.split(",").map((part) => part.trim()).filter(Boolean).map(Number);
  }

  function settings() {
    const form = $("settings").elements;
    const chosen = {
      model: chosenModel(), loss: form.loss.value, lr: Number(form.lr.value), momentum: Number(form.momentum.value),
      batch_size: Number(form.batch_size.value), image_size: Number(form.image_size.value),
      epochs: Number(form.epochs.value),
    };
    if (chosen.model === "mlp") Object.assign(chosen, { hidden: sizes(form.hidden.value), activation: form.activation.value });
    else chosen.channels = sizes(form.channels.value);
    return chosen;
  }

  // ----------------------------------------------------------------- drawing

  function drawWeights(container, urls, word) {
    if (container.children.length !== urls.length) {
      container.replaceChildren(...urls.map((_, i) => {
        const figure = el("figure");
        figure.append(el("img"), el("figcaption", { text: `${word} ${i + 1}` }));
        return figure;
      }));
    }
    urls.forEach((url, i) => { container.children[i].querySelector("img").src = url; });
  }

  function drawOverview(overview) {
    const mlp = overview.settings.model === "mlp";
    $("first-title").textContent = mlp ? "Each first-hidden-layer neuron's weights, as an image"
      : "The first layer's filters, as images";
    $("first-explain").textContent = mlp
      ? "A neuron multiplies each pixel by a weight: laid out like the photo, its weights are the pattern it looks for. Gray is 0, lighter is positive, darker negative."
      : "Each filter is 3 x 3 pixels of weights slid over the photo; gray is 0, lighter is positive, darker negative.";
    $("error-kind").textContent = overview.settings.loss === "ce" ? "cross-entropy" : "mean squared error";
    drawWeights($("first"), overview.first_layer, mlp ? "neuron" : "filter");
    drawWeights($("learned"), overview.learned, mlp ? "neuron" : "filter");
    $("iteration").textContent = overview.iteration;
    $("epoch").textContent = overview.epoch + 1;
    $("accuracy").textContent = "";
    $("batch").replaceChildren();
    $("layers").tBodies[0].replaceChildren();
    $("error").textContent = "–";
    $("errors").textContent = "";
    errors.length = 0;
    drawChart();
    say(`${overview.photos} training photos of ${overview.classes.join(", ")}: ${overview.steps_per_pass} steps of ` +
        `${overview.batch_size} photos make one pass. Press Step.`);
  }

  function drawChart() {
    const chart = $("chart");
    const svg = (tag, attributes, text) => {
      const node = document.createElementNS(chart.namespaceURI, tag); // the SVG namespace
      Object.entries(attributes).forEach(([k, v]) => node.setAttribute(k, v));
      if (text !== undefined) node.textContent = text;
      return node;
    };
    const shown = errors.slice(-600);
    const finite = shown.filter((e) => e !== null);
    const [low, high] = [Math.min(...finite), Math.max(...finite)];
    const y = (e) => (e === null ? 8 : 122 - ((e - low) / Math.max(high - low, 1e-9)) * 110);
    const points = shown.map((e, i) => `${(i / Math.max(shown.length - 1, 1)) * 630 + 5},${y(e)}`);
    chart.replaceChildren(svg("line", { x1: 5, y1: 130, x2: 635, y2: 130, class: "axis" }),
      svg("polyline", { points: points.join(" ") }),
      svg("text", { x: 8, y: 11 }, finite.length ? `${fmt(high, 3)}` : "the error at each iteration"),
      svg("text", { x: 8, y: 138 }, finite.length ? `${fmt(low, 3)}` : ""));
  }


  function photoCard(photo, classes) {
    const card = el("div", { className: "photo" });
    const image = el("img");
    image.src = photo.image;
    image.alt = photo.label;
    const table = el("table");
    const head = el("tr");
    head.append(el("th", { text: "class" }), el("th", { text: "output" }), el("th", { text: "softmax" }), el("th", { text: "target" }));
    table.append(head);
    classes.forEach((name, i) => {
      const row = el("tr");
      row.append(el("th", { text: name }), el("td", { text: fmt(photo.outputs[i], 3) }), el("td", { text: fmt(photo.probabilities[i], 2) }),
        el("td", { text: String(photo.target[i]) }));
      table.append(row);
    });
    card.append(image, el("div", { text: `a photo of a ${photo.label}` }), table);
    return card;
  }

  function meter(value, largest) {
    const bar = el("span", { className: "meter" });
    bar.style.width = `${largest > 0 && value !== null ? Math.max(1, (value / largest) * 80) : 0}px`;
    return bar;
  }

  function drawLayers(layers) {
    const largest = (key) => Math.max(...layers.map((l) => l[key] ?? 0));
    $("layers").tBodies[0].replaceChildren(...layers.map((layer) => {
      const row = el("tr");
      row.append(el("td", { text: layer.label }));
      for (const key of ["gradient", "change", "size"]) {
        const cell = el("td", { text: fmt(layer[key], 3) });
        cell.append(meter(layer[key], largest(key)));
        row.append(cell);
      }
      return row;
    }));
  }

  function drawStep(shown, classes) {
    $("iteration").textContent = shown.iteration;
    $("epoch").textContent = shown.epoch + 1;
    $("error").textContent = fmt(shown.error);
    $("errors").textContent = `mean squared error ${fmt(shown.errors.mse)}, cross-entropy ${fmt(shown.errors.ce)}`;
    errors.push(shown.error);
    drawChart();
    $("batch").replaceChildren(...shown.batch.map((photo) => photoCard(photo, classes)));
    drawLayers(shown.layers);
    const word = $("first").querySelector("figcaption")?.textContent.split(" ")[0] || "neuron";
    drawWeights($("first"), shown.first_layer, word);
    drawWeights($("learned"), shown.learned, word);
    if (shown.validation) {
      $("accuracy").textContent = `after pass ${shown.validation.epoch}: right on ` +
        `${Math.round(100 * shown.validation.accuracy)}% of photos it never trained on`;
    }
  }

  // ----------------------------------------------------------------- actions

  let classes = [];

  function started(overview) {
    classes = overview.classes;
    $("settings").hidden = true;
    $("controls").hidden = false;
    $("progress").hidden = false;
    drawOverview(overview);
  }

  async function step() {
    if (busy) return false;
    busy = true;
    try {
      const shown = await call("/step", {});
      drawStep(shown, classes);
      if (shown.diverged) {
        say(shown.diverged, true);
        return false;
      }
      say(shown.validation ? "A pass over all the photos is done: it was tested on the photos it never trains on." : "");
      return true;
    } catch (error) {
      say(error.message, true);
      return false;
    } finally {
      busy = false;
    }
  }

  async function play() {
    playing = true;
    $("play").disabled = true;
    $("pause").disabled = false;
    $("step").disabled = true;
    while (playing) {
      const began = performance.now();
      if (!(await step())) break;
      const wait = Number($("pace").value) - (performance.now() - began);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, wait)));
    }
    pause();
  }

  function pause() {
    playing = false;
    $("play").disabled = false;
    $("pause").disabled = true;
    $("step").disabled = false;
  }

  async function start(event) {
    event.preventDefault();
    $("start").disabled = true;
    say("Reading the photos and making a network with random weights…");
    try {
      started(await call("/start", settings()));
    } catch (error) {
      say(error.message, true);
    } finally {
      $("start").disabled = false;
    }
  }

  async function trainOn() {
    pause();
    try {
      await call("/train", {});
      $("controls").hidden = true;
      $("settings").hidden = false;
      location.hash = `#/p/${encodeURIComponent(Studio.project.id)}/runs`; // the Train tab follows it live
    } catch (error) {
      say(error.message, true);
    }
  }

  root.querySelectorAll('input[name="model"]').forEach((radio) => radio.addEventListener("change", () => {
    showModelFields();
    $("settings").elements.lr.value = chosenModel() === "mlp" ? "0.01" : "0.05";
  }));
  $("settings").addEventListener("submit", start);
  $("step").addEventListener("click", step);
  $("play").addEventListener("click", play);
  $("pause").addEventListener("click", pause);
  $("train").addEventListener("click", trainOn);
  $("again").addEventListener("click", () => {
    pause();
    $("settings").hidden = false;
    $("controls").hidden = true;
    say("Change what you like and start again from random weights.");
  });
  showModelFields();

  Studio.tab("learn", {
    async show() {
      delete root.dataset.ready;
      try {
        const state = await call("");
        if (state.started) started(state);
        else {
          $("settings").hidden = false;
          $("controls").hidden = true;
          $("progress").hidden = true;
        }
      } catch (error) {
        say(error.message, true);
      } finally {
        root.dataset.ready = "true";
      }
    },
    hide: pause,
  });
})();
