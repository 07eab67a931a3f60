// The Inside tab: one photo through the chosen run's network, layer by layer, channel by channel.
// Everything the server sends is shown with textContent or as an image source, never as HTML.
"use strict";

(() => {
  const root = document.getElementById("inside");
  const $ = (id) => document.getElementById(`inside-${id}`); // this tab's elements
  const SVG = $("svg").namespaceURI; // from the tab's own empty <svg>: no address in the script
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
    [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  let look = null; // the current look's answer
  let shownLayer = null; // {index, page, pages}
  let ownPhoto = null; // a file chosen or dropped

  function say(text, problem = false) {
    $("status").textContent = text;
    $("status").classList.toggle("problem", problem);
  }

  const call = (path, method = "GET", body = undefined) => api(method, projectUrl(`/inside${path}`), body);

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    Object.entries(attributes).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const fmt = (value, digits = 3) => (value === null ? "not a number" : Number(value).toPrecision(digits));

  function colour(share) {
    const position = Math.min(Math.max(share, 0), 1) * (VIRIDIS.length - 1);
    const low = Math.min(Math.floor(position), VIRIDIS.length - 2);
    const mix = position - low;
    const [r, g, b] = VIRIDIS[low].map((c, i) => Math.round(c * (1 - mix) + VIRIDIS[low + 1][i] * mix));
    return `rgb(${r}, ${g}, ${b})`;
  }

  // ----------------------------------------------------------------- choosing

  async function loadPhotos() {
    const photos = await call("/photos");
    $("photo").replaceChildren(...Object.entries(photos).map(([name, paths]) => {
      const group = el("optgroup", { attrs: { label: name } });
      group.append(...paths.map((path) => el("option", { text: path.split("/").pop(), attrs: { value: path } })));
      return group;
    }));
    $("look").disabled = !Studio.run;
    say(Studio.run ? "Choose a photo (or your own), then press Look inside."
      : "No trained model in this project yet: train one first (the Learn tab's Train button makes one too).");
  }

  function chooseOwn(file) {
    ownPhoto = file;
    say(`Your photo "${file.name}" is chosen: press Look inside.`);
  }

  // ----------------------------------------------------------------- a look

  async function lookInside(event) {
    event.preventDefault();
    const form = new FormData();
    form.append("run", Studio.run);
    form.append("checkpoint", $("checkpoint").value);
    if (ownPhoto) form.append("file", ownPhoto, ownPhoto.name);
    else form.append("photo", $("photo").value);
    $("look").disabled = true;
    say("Following the photo through every layer…");
    try {
      look = await call("/look", "POST", form);
      drawLook();
      say("");
      await showLayer(look.layers.findIndex((layer) => layer.kernel), 0); // the first layer with weights
    } catch (error) {
      say(error.message, true);
    } finally {
      $("look").disabled = false;
    }
  }

  function drawOutputs() {
    $("outputs").tBodies[0].replaceChildren(...look.classes.map((name, i) => {
      const row = el("tr");
      row.append(el("td", { text: name }), el("td", { text: fmt(look.outputs[i], 4) }), el("td", { text: percent(look.probabilities[i]) }),
        el("td", { text: percent(look.calibrated[i]) }));
      return row;
    }));
    $("temperature").textContent = `Softmax turns the output values into probabilities. Calibrated: the values are ` +
      `first divided by the temperature, ${fmt(look.temperature, 4)}, measured on photos the network never trained ` +
      `on, so that "90% sure" is right about 90% of the time.`;
    const best = look.calibrated.indexOf(Math.max(...look.calibrated));
    $("answer").textContent = look.neither
      ? `The answer: none of ${look.classes.join(", ")} (the photo looks unlike all of them)`
      : `The answer: ${look.answer} (${percent(look.calibrated[best])} sure)`;
  }

  function drawLook() {
    $("result").hidden = false;
    $("input").src = look.photo;
    $("input-caption").textContent = `input layer: ${look.size} x ${look.size} pixels x 3 colours`;
    $("gradcam").src = look.gradcam;
    $("gradcam-caption").textContent = `where it looked for ${look.gradcam_class} (Grad-CAM)`;
    drawOutputs();
    $("layers").replaceChildren(...look.layers.map((layer) => {
      const item = el("li");
      const button = el("button", { text: describe(layer) });
      button.type = "button";
      button.addEventListener("click", () => showLayer(layer.index, 0));
      item.append(button);
      return item;
    }));
    drawNeurons();
    $("channel").hidden = true;
  }

  function describe(layer) {
    if (layer.index === 0 && layer.channels === 3 * look.size * look.size) {
      return `1. the input layer: the intensity of each pixel's red, green and blue, in a row: ${layer.channels} values`;
    }
    const shape = layer.height === null ? `${layer.channels} values`
      : `${layer.channels} channels of ${layer.height} x ${layer.width}`;
    const sees = layer.sees ? `, each position sees ${layer.sees} x ${layer.sees} pixels of the photo` : "";
    const last = layer.index === look.layers.length - 1 ? " (the output layer)" : "";
    return `${layer.index + 1}. ${layer.kind}${last}: ${shape}${sees}`;
  }

  // ----------------------------------------------------------------- a layer, page by page

  async function showLayer(index, page) {
    if (index < 0) return;
    const shown = await call(`/looks/${look.look}/layers/${index}?page=${page}`).catch((error) => say(error.message, true));
    if (!shown) return;
    shownLayer = { index, page, pages: shown.pages };
    const layer = look.layers[index];
    $("layers").querySelectorAll("button").forEach((button, i) => button.setAttribute("aria-pressed", i === index));
    $("layer").hidden = false;
    $("layer-title").textContent = describe(layer);
    $("layer-explain").textContent = shown.channels
      ? "Each channel is a map of where its filter responded in this photo (brighter: stronger, on one scale for the whole layer). Click one."
      : "Each square is one value (brighter: larger); hover for the number" + (layer.kernel ? ", click for its weights and the photos that excite it." : ".");
    $("page").textContent = `page ${page + 1} of ${shown.pages}`;
    $("previous").disabled = page === 0;
    $("next").disabled = page >= shown.pages - 1;
    $("maps").replaceChildren(...(shown.channels || []).map((channel) => mapButton(index, channel)));
    $("values").replaceChildren(...(shown.values || []).map((value, i) => valueSquare(index, shown, value, i)));
  }

  function mapButton(index, channel) {
    const button = el("button");
    button.type = "button";
    const image = el("img");
    image.src = channel.image;
    image.alt = `channel ${channel.channel + 1}`;
    button.append(image, el("span", { text: `channel ${channel.channel + 1}: ${fmt(channel.strongest, 2)}` }));
    button.dataset.channel = channel.channel;
    button.addEventListener("click", () => {
      $("maps").querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", b === button));
      showChannel(index, channel.channel);
    });
    return button;
  }

  function valueSquare(index, shown, value, i) {
    const square = el("span");
    const unit = shown.first + i;
    square.title = `${unit + 1}: ${fmt(value, 4)}`;
    square.style.background = colour((value - shown.low) / Math.max(shown.high - shown.low, 1e-12));
    if (look.layers[index].kernel) square.addEventListener("click", () => showChannel(index, unit));
    return square;
  }

  // ----------------------------------------------------------------- a channel: weights and top patches

  async function showChannel(layer, channel) {
    say("Finding the pieces of training photos that excite it most (the first time goes through every training photo)…");
    try {
      const shown = await call(`/channel?run=${encodeURIComponent(Studio.run)}&checkpoint=${$("checkpoint").value}` +
        `&layer=${layer}&channel=${channel}`);
      drawChannel(shown);
      say("");
    } catch (error) {
      say(error.message, true);
    }
  }

  function drawKernel(kernel) {
    if (!kernel) {
      $("kernel-explain").textContent = "This layer has no weights of its own: it reshapes, pools or normalizes what the layer before computed.";
      return [];
    }
    if (kernel.kind === "weights") {
      $("kernel-explain").textContent = "A neuron's weights on each value of the layer before (brighter: larger).";
      const low = Math.min(...kernel.values), high = Math.max(...kernel.values);
      const strip = el("div", { className: "values" });
      strip.append(...kernel.values.map((value, i) => {
        const square = el("span");
        square.title = `from ${i + 1}: ${fmt(value, 4)}`;
        square.style.background = colour((value - low) / Math.max(high - low, 1e-12));
        return square;
      }));
      return [strip];
    }
    const figure = (url, caption) => {
      const node = el("figure");
      const image = el("img");
      image.src = url;
      node.append(image, el("figcaption", { text: caption }));
      return node;
    };
    if (kernel.image) {
      $("kernel-explain").textContent = kernel.kind === "template"
        ? "This neuron's weights on the pixels, laid out like the photo: the pattern it looks for (gray 0, lighter positive, darker negative)."
        : `A ${kernel.size} x ${kernel.size} filter over the photo's red, green and blue: the colours and edges it responds to (gray 0).`;
      return [figure(kernel.image, kernel.kind === "template" ? "its weights" : "the filter")];
    }
    $("kernel-explain").textContent = `A ${kernel.size} x ${kernel.size} filter over each of the ${kernel.inputs} channels ` +
      "of the layer before; the ones it weighs most are shown (gray 0, lighter positive, darker negative).";
    return kernel.tiles.map((tile) => figure(tile.image, `from channel ${tile.input + 1}`));
  }

  function drawPatch(patch, size) {
    const card = el("div", { className: "patch" });
    const pair = el("div", { className: "pair" });
    const piece = el("img", { className: "piece" });
    piece.src = patch.image;
    piece.alt = "the piece";
    const whole = el("div", { className: "whole" });
    const image = el("img");
    image.src = patch.whole;
    image.alt = patch.photo;
    const box = el("div", { className: "box" });
    const [top, left, bottom, right] = patch.box;
    Object.assign(box.style, { top: `${(100 * top) / size}%`, left: `${(100 * left) / size}%`,
      height: `${(100 * (bottom - top + 1)) / size}%`, width: `${(100 * (right - left + 1)) / size}%` });
    whole.append(image, box);
    pair.append(piece, whole);
    card.append(pair, el("div", { text: patch.photo }), el("div", { text: `response ${fmt(patch.value, 3)}` }));
    return card;
  }

  function drawChannel(shown) {
    $("channel").hidden = false;
    const layer = look.layers[shown.layer];
    const unit = layer.height === null ? "value" : "channel";
    $("channel-title").textContent = `Layer ${shown.layer + 1} (${shown.kind}), ${unit} ${shown.channel + 1}`;
    $("kernel").replaceChildren(...drawKernel(shown.kernel));
    $("patches-explain").textContent = shown.sees >= shown.size
      ? "Each training photo is seen whole by this layer: these are the photos that excite it most."
      : `Each piece is the ${shown.sees} x ${shown.sees} pixels one position of this layer sees, where it responded most in that photo.`;
    $("patches").replaceChildren(...shown.patches.map((patch) => drawPatch(patch, shown.size)));
    $("channel").scrollIntoView({ block: "nearest" });
  }

  // ----------------------------------------------------------------- an MLP's neurons

  function drawNeurons() {
    $("neurons").hidden = !look.neurons.length;
    $("neuron").textContent = "";
    $("plots").replaceChildren(...look.neurons.map((neurons, number) => plot(neurons, number)));
  }

  function plot(neurons, number) {
    const [w, h, pad] = [420, 240, 24];
    const xs = neurons.curve.x, ys = neurons.curve.y;
    const [x0, x1] = [xs[0], xs[xs.length - 1]];
    const [y0, y1] = [Math.min(...ys, ...neurons.activations), Math.max(...ys, ...neurons.activations)];
    const px = (x) => pad + ((x - x0) / (x1 - x0)) * (w - 2 * pad);
    const py = (y) => h - pad - ((y - y0) / Math.max(y1 - y0, 1e-9)) * (h - 2 * pad);
    const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "plot", role: "img",
      "aria-label": `hidden layer ${number + 1}: ${neurons.function}` });
    chart.append(svg("line", { x1: pad, x2: w - pad, y1: py(0), y2: py(0), class: "axis" }),
      svg("line", { x1: px(0), x2: px(0), y1: pad, y2: h - pad, class: "axis" }),
      svg("text", { x: pad, y: 14 }, `hidden layer ${number + 1}: ${neurons.function} of the weighted sum`),
      svg("polyline", { points: xs.map((x, i) => `${px(x)},${py(ys[i])}`).join(" ") }));
    neurons.weighted_sums.forEach((sum, j) => {
      const dot = svg("circle", { cx: px(sum), cy: py(neurons.activations[j]), r: 4 });
      dot.append(svg("title", {}, `neuron ${j + 1}`));
      dot.addEventListener("click", () => {
        root.querySelectorAll(".plot circle").forEach((c) => c.classList.toggle("chosen", c === dot));
        $("neuron").textContent = `Neuron ${j + 1} of hidden layer ${number + 1}: weighted sum ${fmt(sum, 4)} -> ` +
          `${neurons.function} -> activation ${fmt(neurons.activations[j], 4)}`;
        showChannel(neurons.layer, j);
      });
      chart.append(dot);
    });
    return chart;
  }

  // ----------------------------------------------------------------- wiring

  $("choose").addEventListener("submit", lookInside);
  $("photo").addEventListener("change", () => { ownPhoto = null; $("file").value = ""; });
  $("file").addEventListener("change", () => { if ($("file").files[0]) chooseOwn($("file").files[0]); });
  $("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
  $("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
  $("drop").addEventListener("drop", (event) => {
    event.preventDefault();
    $("drop").classList.remove("over");
    if (event.dataTransfer.files[0]) chooseOwn(event.dataTransfer.files[0]);
  });
  $("previous").addEventListener("click", () => showLayer(shownLayer.index, shownLayer.page - 1));
  $("next").addEventListener("click", () => showLayer(shownLayer.index, shownLayer.page + 1));

  Studio.tab("inside", {
    async show() {
      delete root.dataset.ready;
      $("result").hidden = true;
      look = null;
      try {
        await loadPhotos();
      } catch (error) {
        say(error.message, true);
      } finally {
        root.dataset.ready = Studio.run || "none"; // the run shown
      }
    },
  });
})();
