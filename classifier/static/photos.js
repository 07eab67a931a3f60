// The Photos tab: each class and its photos (thumbnails made by the server, a page at a time, so
// a class of 10,000 photos stays quick), photos in from a folder, from files, from the webcam or
// from a folder of this computer (--import-from), and every skipped file with the reason.
"use strict";

const PHOTOS_PAGE = 60;
let webcamTaken = 0;

function setStatus(text) {
  $("photos-status").textContent = text;
}

function reportUpload(result) {
  setStatus(`added ${result.added} photo(s)` + (result.skipped.length ? `, skipped ${result.skipped.length}` : ""));
  showSkipped(result.skipped, $("skipped"), $("skipped-summary"), $("skipped-list"));
}

async function uploadItems(items, set) {
  const { classes, skipped } = byClass(items);
  const result = await uploadClasses(classes, set, (done, total) => setStatus(`copying photos: ${done} of ${total}`));
  reportUpload({ added: result.added.length, skipped: skipped.concat(result.skipped) });
  await showClasses();
}

function tileActions(tile, photo, classes) {
  const bar = el("div", { className: "tile-actions" });
  const toggle = el("button", { text: photo.excluded ? "Take back" : "Leave out", attrs: { type: "button" } });
  toggle.addEventListener("click", async () => {
    await api("POST", projectUrl("/exclude"), { paths: [photo.path], excluded: !photo.excluded });
    await showClasses();
  });
  const target = el("select", { attrs: { "aria-label": "move to class" } },
    ...classes.filter((c) => c.name !== photo.path.split("/")[0]).map((c) => el("option", { text: c.name, attrs: { value: c.name } })));
  const move = el("button", { text: "Move", attrs: { type: "button" } });
  move.addEventListener("click", async () => {
    await api("POST", projectUrl("/move"), { path: photo.path, to: target.value, reason: "moved on the Photos tab" });
    await showClasses();
  });
  const remove = el("button", { text: "Delete…", className: "danger", attrs: { type: "button" } });
  remove.addEventListener("click", async () => {
    if (await confirmAction(`Delete ${photo.name} from this computer? This cannot be undone.`, "Delete")) {
      await api("DELETE", projectUrl(`/photos?path=${encodeURIComponent(photo.path)}&set=${tile.dataset.set}`));
      await showClasses();
    }
  });
  if (tile.dataset.set === "photos") bar.append(toggle, target, move);
  bar.append(remove);
  return bar;
}

function photoTile(photo, set, classes) {
  const tile = el("figure", { className: "tile" + (photo.excluded ? " excluded" : ""), attrs: { "data-path": photo.path, "data-set": set } },
    thumbnail(photo.path, set), el("figcaption", { text: photo.name }));
  if (photo.excluded) tile.append(el("span", { className: "badge", text: "left out" }));
  tile.addEventListener("click", (event) => {
    if (event.target.closest(".tile-actions")) return;
    const open = tile.querySelector(".tile-actions");
    if (open) open.remove();
    else tile.append(tileActions(tile, photo, classes));
  });
  return tile;
}

async function showPage(grid, more, name, offset, set, classes) {
  const page = await api("GET", projectUrl(`/photos?class=${encodeURIComponent(name)}&offset=${offset}&limit=${PHOTOS_PAGE}&set=${set}`));
  grid.append(...page.photos.map((photo) => photoTile(photo, set, classes)));
  const shown = offset + page.photos.length;
  more.hidden = shown >= page.total;
  more.textContent = `show more (${page.total - shown} more)`;
  more.onclick = () => showPage(grid, more, name, shown, set, classes);
}

function classSection(item, set, classes) {
  const grid = el("div", { className: "thumbs" });
  const more = el("button", { className: "quiet", attrs: { type: "button" } });
  const section = el("section", { className: "class", attrs: { "data-class": item.name } },
    el("h3", {}, el("span", { text: item.name }), el("span", { className: "muted", text: ` · ${item.photos} photo(s)` })),
    grid, more);
  showPage(grid, more, item.name, 0, set, classes).catch((error) => notice(error.message));
  return section;
}

async function showClasses() {
  const project = (Studio.project = await api("GET", projectUrl()));
  const select = $("class-select");
  const chosen = select.value;
  select.replaceChildren(...project.classes.map((c) => el("option", { text: c.name, attrs: { value: c.name } })));
  if (project.classes.some((c) => c.name === chosen)) select.value = chosen;
  $("webcam-class").textContent = select.value || "(add a class first)";
  $("classes").replaceChildren(...project.classes.map((c) => classSection(c, "photos", project.classes)));
  if (!project.classes.length) $("classes").append(el("p", { className: "muted", text: "No photos yet: add a folder that holds one folder per class." }));
  $("test-classes").replaceChildren(...project.test_classes.map((c) => classSection(c, "test", project.test_classes)));
}

async function showSources() {
  const sources = await api("GET", "/api/sources");
  $("import-group").hidden = !sources.length;
  $("source-select").replaceChildren(...sources.map((s) => el("option", { text: s.name, attrs: { value: String(s.id) } })));
}

async function takePhoto() {
  const name = $("class-select").value;
  if (!name) return notice("add a class first: photos go into a class");
  const form = new FormData();
  form.append("file", await frameBlob($("webcam-video")), `webcam-${new Date().toISOString().replace(/[:.]/g, "-")}.jpg`);
  const answer = await api("POST", projectUrl(`/photos?class=${encodeURIComponent(name)}&set=photos`), form);
  webcamTaken += answer.added.length;
  $("webcam-count").textContent = `${webcamTaken} photo(s) taken`;
  if (answer.skipped.length) notice(answer.skipped[0].reason);
  await showClasses();
}

function setUpPhotos() {
  $("add-folder").addEventListener("change", (event) => {
    uploadItems(chosenFiles(event.target), "photos").catch((error) => notice(error.message));
    event.target.value = "";
  });
  $("add-test-folder").addEventListener("change", (event) => {
    uploadItems(chosenFiles(event.target), "test").catch((error) => notice(error.message));
    event.target.value = "";
  });
  dropZone($("classes"), (items) => uploadItems(items, "photos").catch((error) => notice(error.message)));
  $("add-files").addEventListener("change", async (event) => {
    const name = $("class-select").value;
    const files = Array.from(event.target.files);
    event.target.value = "";
    if (!name) return notice("add a class first: photos go into a class");
    const result = await uploadClasses({ [name]: files }, "photos", (done, total) => setStatus(`copying photos: ${done} of ${total}`));
    reportUpload({ added: result.added.length, skipped: result.skipped });
    await showClasses();
  });
  $("class-select").addEventListener("change", () => ($("webcam-class").textContent = $("class-select").value));
  $("new-class").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await api("POST", projectUrl("/classes"), { name: $("new-class-name").value });
      $("new-class-name").value = "";
      await showClasses();
      $("class-select").value = answer.name;
      $("webcam-class").textContent = answer.name;
    } catch (error) {
      notice(error.message);
    }
  });
  $("import-button").addEventListener("click", async () => {
    setStatus("importing…");
    try {
      const result = await api("POST", projectUrl("/import"), { source: Number($("source-select").value), path: $("source-path").value });
      reportUpload(result);
      await showClasses();
    } catch (error) {
      setStatus("");
      notice(error.message);
    }
  });
  $("webcam-open").addEventListener("click", async () => {
    try {
      $("webcam").hidden = false;
      $("webcam-shoot").disabled = true;
      await openCamera($("webcam-video"));
      $("webcam-shoot").disabled = false;
    } catch (error) {
      $("webcam").hidden = true;
      notice("no camera: " + error.message);
    }
  });
  $("webcam-shoot").addEventListener("click", () => takePhoto().catch((error) => notice(error.message)));
  $("webcam-close").addEventListener("click", () => {
    closeCamera($("webcam-video"));
    $("webcam").hidden = true;
  });
}

Studio.tab("photos", {
  async show() {
    if (Studio.lastUpload) {
      reportUpload(Studio.lastUpload);
      Studio.lastUpload = null;
    }
    await Promise.all([showClasses(), showSources()]);
  },
  hide() {
    closeCamera($("webcam-video"));
    $("webcam").hidden = true;
  },
});

document.addEventListener("DOMContentLoaded", setUpPhotos);
