// The studio's page: the list of projects, and a project's tabs (each area's script registers
// its tab with Studio.tab). The address says where the page is (#/ or #/p/ID/TAB), so a reload
// or a bookmark comes back to the same place; everything else is read from the server.
"use strict";

const JOB_POLL_MS = 2000;
const RUN_TABS = ["evaluate", "try", "export", "inside"]; // tabs about one trained run: the run picker shows

function when(timestamp) {
  const date = new Date(timestamp);
  return isNaN(date) ? String(timestamp || "") : date.toLocaleString();
}

function hash(projectId, tab) {
  return `#/p/${encodeURIComponent(projectId)}/${tab}`;
}

function currentTab() {
  return document.querySelector("#tabs a.active")?.dataset.tab;
}

function hideTabs() {
  for (const section of document.querySelectorAll("section.tab")) {
    if (!section.hidden && Studio.tabs[section.dataset.tab]?.hide) Studio.tabs[section.dataset.tab].hide();
    section.hidden = true;
  }
}

// ---------------------------------------------------------------------- the projects

function projectCard(project) {
  const classes = project.classes.map((c) => `${c.name} (${c.photos})`).join(", ") || "no photos yet";
  const link = el("a", { text: project.name, attrs: { href: hash(project.id, "photos") } });
  return el("article", { className: "project-card", attrs: { "data-project": project.id } },
    el("h2", {}, link),
    el("p", { text: classes }),
    el("p", { className: "muted", text: `${project.runs.length} run(s) · created ${when(project.created)}` }));
}

async function showProjects() {
  hideTabs();
  Studio.project = null;
  $("view-project").hidden = true;
  $("view-projects").hidden = false;
  $("crumb-project").textContent = "";
  const projects = await api("GET", "/api/projects");
  $("project-list").replaceChildren(...projects.map(projectCard));
  $("no-projects").hidden = projects.length > 0;
}

async function startFromFolder(items) {
  const status = $("new-status");
  if (!items.length) return;
  const name = items[0].path.split("/")[0] || "photos";
  const { classes, skipped } = byClass(items);
  if (!Object.keys(classes).length) {
    status.textContent = "that folder holds no class folders: put the photos in one folder per class (cat/, dog/, …)";
    return;
  }
  Studio.project = await api("POST", "/api/projects", { name });
  const result = await uploadClasses(classes, "photos", (done, total) => {
    status.textContent = `copying photos into “${name}”: ${done} of ${total}`;
  });
  status.textContent = "";
  Studio.lastUpload = { added: result.added.length, skipped: skipped.concat(result.skipped) };
  location.hash = hash(Studio.project.id, "photos");
}

// ---------------------------------------------------------------------- a project

async function loadProject(projectId) {
  Studio.project = await api("GET", `/api/projects/${encodeURIComponent(projectId)}`);
  $("project-title").textContent = Studio.project.name;
  $("crumb-project").textContent = Studio.project.name;
  return Studio.project;
}

async function showRunPicker(tab) {
  const picker = $("run-picker");
  picker.hidden = !RUN_TABS.includes(tab);
  if (picker.hidden) return;
  const runs = (await api("GET", projectUrl("/runs"))).filter((run) => run.trained);
  const select = $("run-select");
  if (!runs.some((run) => run.name === Studio.run)) Studio.run = runs.length ? runs[0].name : null;
  select.replaceChildren(...runs.map((run) => el("option", {
    text: `${run.name} (val accuracy ${percent(run.val_accuracy)})`, attrs: { value: run.name },
  })));
  select.value = Studio.run || "";
  const chosen = runs.find((run) => run.name === Studio.run);
  $("run-facts").textContent = chosen ? "" : "no trained model yet: train one in the Train tab";
}

async function openProject(projectId, tab) {
  try {
    if (!Studio.project || Studio.project.id !== projectId || !currentTab()) await loadProject(projectId);
  } catch (error) {
    notice(error.message);
    location.hash = "#/";
    return;
  }
  hideTabs();
  $("view-projects").hidden = true;
  $("view-project").hidden = false;
  for (const link of document.querySelectorAll("#tabs a")) {
    link.href = hash(projectId, link.dataset.tab);
    link.classList.toggle("active", link.dataset.tab === tab);
  }
  await showRunPicker(tab);
  const section = document.querySelector(`section.tab[data-tab="${tab}"]`);
  if (!section) return;
  section.hidden = false;
  if (Studio.tabs[tab]) await Studio.tabs[tab].show(Studio.project);
}

async function renameProject() {
  const name = await askText("A new name for the project:", "Rename", Studio.project.name);
  if (name === null) return;
  try {
    await api("PATCH", projectUrl(), { name });
    await loadProject(Studio.project.id);
  } catch (error) {
    notice(error.message);
  }
}

async function deleteProject() {
  const project = Studio.project;
  const sure = await confirmAction(`Delete “${project.name}” from this computer: its photos, runs and exports? ` +
    `This cannot be undone. Type the project's folder name, ${project.id}, to confirm.`, "Delete", project.id);
  if (!sure) return;
  try {
    await api("DELETE", projectUrl(`?confirm=${encodeURIComponent(project.id)}`));
    location.hash = "#/";
  } catch (error) {
    notice(error.message);
  }
}

// ---------------------------------------------------------------------- the running job

async function pollJob() {
  try {
    const job = await api("GET", "/api/job");
    const link = $("job-indicator");
    link.hidden = !job;
    if (job) {
      link.textContent = job.kind === "train" ? `training ${job.name}…` : "checking photos…";
      link.href = hash(job.project, job.kind === "train" ? "runs" : "audit");
    }
  } catch (error) {
    /* the server is restarting: the next poll will tell */
  }
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const shown = parts[0] === "p" && parts[1] ? openProject(parts[1], parts[2] || "photos") : showProjects();
  shown.catch((error) => notice(error.message));
}

function setUp() {
  $("new-folder-input").addEventListener("change", (event) => {
    startFromFolder(chosenFiles(event.target)).catch((error) => notice(error.message));
    event.target.value = "";
  });
  dropZone($("new-from-folder"), (items) => startFromFolder(items).catch((error) => notice(error.message)));
  $("new-project").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const project = await api("POST", "/api/projects", { name: $("new-project-name").value });
      $("new-project-name").value = "";
      location.hash = hash(project.id, "photos");
    } catch (error) {
      notice(error.message);
    }
  });
  $("rename-project").addEventListener("click", renameProject);
  $("delete-project").addEventListener("click", deleteProject);
  $("run-select").addEventListener("change", () => {
    Studio.run = $("run-select").value;
    route();
  });
  window.addEventListener("hashchange", route);
  setInterval(pollJob, JOB_POLL_MS);
  pollJob();
  route();
}

document.addEventListener("DOMContentLoaded", setUp);
