// The Export tab: the chosen run's checkpoint, its ONNX and TorchScript files and a model card,
// to download. An exported model answers exactly as the Try it tab does.
"use strict";

const DOWNLOADS = [
  ["best.pt", "the checkpoint (PyTorch): predict.py, serve, Classifier.load"],
  ["model.onnx", "ONNX: any ONNX runtime, in any language"],
  ["model.ts", "TorchScript: torch.jit.load, no project code needed"],
  ["MODEL_CARD.md", "the model card: classes, accuracy, how to use it"],
];

async function showExports() {
  if (!Studio.run) {
    $("downloads").replaceChildren(el("li", { className: "muted", text: "no trained model yet: train one in the Train tab" }));
    $("model-card-text").hidden = true;
    return;
  }
  const run = (await api("GET", projectUrl("/runs"))).find((r) => r.name === Studio.run);
  const have = new Set(["best.pt", ...run.exports]);
  $("downloads").replaceChildren(...DOWNLOADS.map(([file, about]) => el("li", { attrs: { "data-file": file } },
    have.has(file) ? el("a", { text: file, attrs: { href: runUrl(`/download/${file}`), download: `${Studio.project.id}-${Studio.run}-${file}` } })
      : el("span", { className: "muted", text: `${file} (not made yet)` }),
    el("span", { className: "muted", text: ` · ${about}` }))));
  const card = $("model-card-text");
  card.hidden = !have.has("MODEL_CARD.md");
  if (!card.hidden) card.textContent = await api("GET", runUrl("/download/MODEL_CARD.md"));
}

async function makeExport(format) {
  if (!Studio.run) return notice("no trained model yet: train one in the Train tab");
  $("export-status").textContent = `making the ${format === "onnx" ? "ONNX" : "TorchScript"} file… (up to a minute)`;
  for (const button of [$("export-onnx"), $("export-torchscript")]) button.disabled = true;
  try {
    await api("POST", runUrl("/export"), { format });
    $("export-status").textContent = "";
    await showExports();
  } catch (error) {
    $("export-status").textContent = error.message;
  } finally {
    for (const button of [$("export-onnx"), $("export-torchscript")]) button.disabled = false;
  }
}

Studio.tab("export", { show: showExports });

document.addEventListener("DOMContentLoaded", () => {
  $("export-onnx").addEventListener("click", () => makeExport("onnx"));
  $("export-torchscript").addEventListener("click", () => makeExport("torchscript"));
});
