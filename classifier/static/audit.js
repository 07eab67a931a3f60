// The Check tab: the audit (python -m classifier.audit) as the server's job, its findings as
// photo cards in plain words, one click to leave a photo out or move it to the class it looks
// like; every move is listed and can be undone. Nothing is deleted here.
"use strict";

const AUDIT_POLL_MS = 1000;
const KINDS = {
  unreadable: "Files that do not open",
  duplicate: "The same photo twice",
  label: "May be in the wrong class",
  neither: "Look like none of the classes",
  tiny: "Too small to learn from",
  imbalance: "Classes with far fewer photos than the largest",
  small_class: "Classes with too few photos to measure them",
  ignored: "Files training passes over",
};
let auditTimer = null;

function findingText(f) {
  switch (f.kind) {
    case "unreadable": return `does not open: ${f.reason}`;
    case "duplicate": return `${f.match === "exact" ? "the same file as" : "nearly the same photo as"} ${f.of}` +
      (f.given !== f.of_given ? ` (filed as ${f.given} and as ${f.of_given})` : "");
    case "label": return `filed as ${f.given}, looks like ${f.suggested} (${percent(f.confidence, 0)} sure)`;
    case "neither": return `filed as ${f.given}, looks like none of the classes` + (f.imagenet ? ` (more like: ${f.imagenet.slice(0, 3).join(", ")})` : "");
    case "tiny": return `only ${f.width} × ${f.height} pixels`;
    case "imbalance": return `${f.given}: ${f.count} photos, the largest class has ${f.largest}`;
    case "small_class": return `${f.given}: ${f.val_photos} photo(s) to measure it on; add photos to this class`;
    default: return f.reason || "";
  }
}

async function act(call) {
  try {
    await call();
    await showAudit();
  } catch (error) {
    notice(error.message);
  }
}

function findingCard(f) {
  const card = el("article", { className: "finding" + (f.excluded ? " excluded" : ""), attrs: { "data-kind": f.kind, "data-path": f.path } });
  const isPhoto = f.exists !== undefined;
  if (isPhoto && f.exists) card.append(el("div", { className: "pair" }, thumbnail(f.path), f.of ? thumbnail(f.of) : null));
  card.append(el("p", { className: "path", text: f.path }), el("p", { text: findingText(f) }));
  if (!isPhoto) return card;
  if (!f.exists) return card.append(el("p", { className: "muted", text: "moved or deleted since the check" })), card;
  const actions = el("div", { className: "row" });
  actions.append(el("button", {
    text: f.excluded ? "Take back" : "Leave out", attrs: { type: "button", "data-action": "exclude" },
    onclick: () => act(() => api("POST", projectUrl("/exclude"), { paths: [f.path], excluded: !f.excluded })),
  }));
  if (f.kind === "label" && f.path.split("/")[0] !== f.suggested) {
    actions.append(el("button", {
      text: `Move to ${f.suggested}`, attrs: { type: "button", "data-action": "move" },
      onclick: () => act(() => api("POST", projectUrl("/move"), { path: f.path, to: f.suggested, reason: `the check: looks like ${f.suggested}` })),
    }));
  }
  card.append(actions);
  return card;
}

function showFindings(findings) {
  const sections = [];
  for (const [kind, title] of Object.entries(KINDS)) {
    const found = findings.filter((f) => f.kind === kind).sort((a, b) => (b.confidence ?? 1) - (a.confidence ?? 1));
    if (!found.length) continue;
    sections.push(el("section", { className: "kind", attrs: { "data-kind": kind } },
      el("h2", { text: `${title} (${found.length})` }), el("div", { className: "findings" }, ...found.map(findingCard))));
  }
  if (!sections.length) sections.push(el("p", { text: "Nothing found: the photos look ready for training." }));
  $("findings").replaceChildren(...sections);
}

async function showMoves() {
  const moves = await api("GET", projectUrl("/moves"));
  $("moves").replaceChildren(...moves.reverse().map((move) => el("li", {},
    el("span", { text: `${move.from} → ${move.to}` + (move.reason ? ` (${move.reason})` : "") }),
    move.undone ? el("span", { className: "muted", text: " · undone" })
      : el("button", { text: "Undo", className: "quiet", attrs: { type: "button" },
        onclick: () => act(() => api("POST", projectUrl(`/moves/${move.id}/undo`))) }))));
  if (!moves.length) $("moves").append(el("li", { className: "muted", text: "no photo moved yet" }));
}

async function showAudit() {
  clearTimeout(auditTimer);
  const audit = await api("GET", projectUrl("/audit"));
  const job = audit.job;
  const running = job && job.state === "running";
  $("audit-run").disabled = running;
  $("audit-status").textContent = !job ? "not checked yet" : running ? `checking the photos… ${Math.round(Date.now() / 1000 - job.started)} s`
    : job.state === "finished" ? `checked ${when(job.ended * 1000)}` : `the check ${job.state}: ${job.message}`;
  $("audit-status").dataset.state = job ? job.state : "none";
  showFindings(audit.findings);
  await showMoves();
  if (running) auditTimer = setTimeout(() => showAudit().catch((error) => notice(error.message)), AUDIT_POLL_MS);
  else pollJob(); // the header's job indicator: the check has ended
}

Studio.tab("audit", {
  show: showAudit,
  hide() {
    clearTimeout(auditTimer);
  },
});

document.addEventListener("DOMContentLoaded", () => {
  $("audit-run").addEventListener("click", () => act(() => api("POST", projectUrl("/audit"))));
});
