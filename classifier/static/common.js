// What every part of the studio's page shares: the API, elements made with textContent only
// (a hostile name is shown as text, never parsed as HTML), confirmation, and uploads.
"use strict";

const Studio = {
  tabs: {}, // name -> {show(project), hide()}: each area's script registers its tab
  project: null, // the open project, as GET /api/projects/ID gives it
  run: null, // the run the Evaluate, Try it and Export tabs show
  tab(name, handlers) {
    this.tabs[name] = handlers;
  },
};

const UPLOAD_BATCH_FILES = 16;
const UPLOAD_BATCH_BYTES = 8 * 2 ** 20; // well under the server's --max-upload-mb
const UPLOADS_IN_FLIGHT = 2;

async function api(method, url, body) {
  const options = { method, headers: {} };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers["content-type"] = "application/json";
  }
  const response = await fetch(url, options);
  const type = response.headers.get("content-type") || "";
  const answer = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((answer && answer.error) || `HTTP ${response.status}`);
  return answer;
}

function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined) node.textContent = String(options.text);
  for (const [name, value] of Object.entries(options.attrs || {})) node.setAttribute(name, value);
  if (options.onclick) node.addEventListener("click", options.onclick);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function $(id) {
  return document.getElementById(id);
}

function projectUrl(path = "") {
  return `/api/projects/${encodeURIComponent(Studio.project.id)}${path}`;
}

function runUrl(path = "", run = Studio.run) {
  return projectUrl(`/runs/${encodeURIComponent(run)}${path}`);
}

function thumbnail(path, set = "photos") {
  const image = el("img", { attrs: { alt: path, loading: "lazy" } });
  image.src = projectUrl(`/thumbnail?path=${encodeURIComponent(path)}&set=${set}`);
  return image;
}

function notice(message) {
  const box = $("notice");
  box.textContent = message;
  box.hidden = !message;
  if (message) setTimeout(() => box.textContent === message && (box.hidden = true), 8000);
}

// A question in the page's own dialog (never window.confirm): resolves true when confirmed;
// with `typed`, only when the user types that text.
function confirmAction(text, okLabel, typed) {
  const dialog = $("confirm");
  const input = $("confirm-input");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  input.hidden = !typed;
  input.value = "";
  input.placeholder = typed || "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" && (!typed || input.value === typed)),
      { once: true });
  });
}

function askText(text, okLabel, value) {
  const dialog = $("confirm");
  const input = $("confirm-input");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  input.hidden = false;
  input.value = value || "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? input.value : null), { once: true });
  });
}

// ---------------------------------------------------------------------- photos in

// [{file, path}] -> {class: [file]} and the files that are in no class folder. path is the
// file's path inside the chosen folder: FOLDER/CLASS/.../FILE or FOLDER/train|val|test/CLASS/FILE.
function byClass(items) {
  const classes = {};
  const skipped = [];
  for (const { file, path } of items) {
    const parts = path.split("/").filter(Boolean);
    if (parts.some((part) => part.startsWith("."))) continue; // hidden files: .DS_Store and the like
    const start = ["train", "val", "test"].includes(parts[1]) && parts.length >= 4 ? 2 : 1;
    if (parts.length < start + 2) {
      skipped.push({ name: path, reason: "not in a class folder (put photos in one folder per class)" });
      continue;
    }
    (classes[parts[start]] = classes[parts[start]] || []).push(file);
  }
  return { classes, skipped };
}

function batches(files) {
  const out = [];
  let batch = [];
  let bytes = 0;
  for (const file of files) {
    if (batch.length && (batch.length >= UPLOAD_BATCH_FILES || bytes + file.size > UPLOAD_BATCH_BYTES)) {
      out.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(file);
    bytes += file.size;
  }
  if (batch.length) out.push(batch);
  return out;
}

// Upload {class: [File]} into the open project, a few files a request; report(done, total).
async function uploadClasses(classes, set, report) {
  const jobs = [];
  for (const [name, files] of Object.entries(classes)) for (const batch of batches(files)) jobs.push([name, batch]);
  const total = jobs.reduce((sum, [, batch]) => sum + batch.length, 0);
  const result = { added: [], skipped: [] };
  let done = 0;
  const worker = async () => {
    while (jobs.length) {
      const [name, batch] = jobs.shift();
      const form = new FormData();
      for (const file of batch) form.append("file", file, file.name);
      try {
        const answer = await api("POST", projectUrl(`/photos?class=${encodeURIComponent(name)}&set=${set}`), form);
        result.added.push(...answer.added);
        result.skipped.push(...answer.skipped);
      } catch (error) {
        result.skipped.push(...batch.map((file) => ({ name: `${name}/${file.name}`, reason: error.message })));
      }
      done += batch.length;
      report(done, total);
    }
  };
  await Promise.all(Array.from({ length: UPLOADS_IN_FLIGHT }, worker));
  return result;
}

// The files of a chosen folder (<input webkitdirectory>) or of a drop (folders walked).
function chosenFiles(input) {
  return Array.from(input.files).map((file) => ({ file, path: file.webkitRelativePath || file.name }));
}

async function droppedFiles(event) {
  const entries = Array.from(event.dataTransfer.items || [])
    .map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
    .filter(Boolean);
  if (!entries.length) return Array.from(event.dataTransfer.files).map((file) => ({ file, path: file.name }));
  const found = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      found.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      let chunk;
      do {
        chunk = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        for (const child of chunk) await walk(child, prefix + entry.name + "/");
      } while (chunk.length);
    }
  };
  for (const entry of entries) await walk(entry, "");
  return found;
}

function showSkipped(skipped, details, summary, list) {
  details.hidden = !skipped.length;
  summary.textContent = `${skipped.length} file(s) skipped: why`;
  list.replaceChildren(...skipped.map((s) => el("li", {}, el("code", { text: s.name }), el("span", { text: ": " + s.reason }))));
}

function dropZone(zone, onItems) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    onItems(await droppedFiles(event));
  });
}

// ---------------------------------------------------------------------- the webcam

async function openCamera(video) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this browser gives the page no camera (it needs http://127.0.0.1 or https)");
  }
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  await video.play();
  await new Promise((resolve) => (video.videoWidth ? resolve() : video.addEventListener("loadeddata", resolve, { once: true })));
}

function closeCamera(video) {
  if (video.srcObject) video.srcObject.getTracks().forEach((track) => track.stop());
  video.srcObject = null;
}

function frameBlob(video, size) {
  if (!video.videoWidth) throw new Error("the camera gives no picture yet");
  const scale = size ? size / Math.max(video.videoWidth, video.videoHeight) : 1;
  const canvas = el("canvas");
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}
