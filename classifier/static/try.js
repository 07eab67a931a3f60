// The Try it tab: photos or the webcam, live, through the chosen run's model (serve's /predict
// over its best.pt): the label, calibrated probabilities, "neither" in plain words, and where it
// looked (Grad-CAM). The answers are the exported model's.
"use strict";

const TRY_IN_FLIGHT = 2;
const LIVE_FRAME_SIZE = 320; // pixels, the longer side of the frames sent: enough for every recipe
let liveOn = false;
let triedRun = null; // the cards shown are this run's answers

async function tryOne(file) {
  const card = newCard(file, $("try-cards"));
  const url = runUrl("/predict");
  card.querySelector(".toggle").addEventListener("click", () => toggleHeatmap(card, async () => (await predictOne(url, file, true)).heatmap));
  try {
    showResult(card, await predictOne(url, file, false), true);
  } catch (error) {
    showError(card, error.message);
  }
}

async function tryAll(files) {
  if (!Studio.run) return notice("no trained model yet: train one in the Train tab");
  const queue = Array.from(files);
  $("try-status").textContent = `asking the model about ${queue.length} photo(s)…`;
  const worker = async () => {
    while (queue.length) await tryOne(queue.shift());
  };
  await Promise.all(Array.from({ length: TRY_IN_FLIGHT }, worker));
  $("try-status").textContent = "";
}

// Frames one after the other, each sent as soon as the last is answered: as many answers a
// second as the model gives.
async function liveLoop() {
  const video = $("live-video");
  const url = runUrl("/predict");
  let answered = 0;
  const started = performance.now();
  while (liveOn) {
    const frame = new File([await frameBlob(video, LIVE_FRAME_SIZE)], "webcam.jpg", { type: "image/jpeg" });
    try {
      const result = await predictOne(url, frame, false);
      if (!liveOn) break;
      $("live-label").textContent = result.label;
      $("live-badge").textContent = neitherWords(Object.keys(result.probabilities));
      $("live-badge").hidden = !result.neither;
      showBars($("live-bars"), result.probabilities);
      answered += 1;
      const rate = answered / ((performance.now() - started) / 1000);
      $("live-rate").textContent = `${rate.toFixed(1)} answers a second`;
      $("live-rate").dataset.rate = rate.toFixed(2);
    } catch (error) {
      $("live-rate").textContent = error.message;
      break;
    }
  }
}

async function liveOpen() {
  if (!Studio.run) return notice("no trained model yet: train one in the Train tab");
  try {
    $("live").hidden = false;
    await openCamera($("live-video"));
    liveOn = true;
    liveLoop();
  } catch (error) {
    $("live").hidden = true;
    notice("no camera: " + error.message);
  }
}

function liveClose() {
  liveOn = false;
  closeCamera($("live-video"));
  $("live").hidden = true;
}

Studio.tab("try", {
  show() {
    if (triedRun !== Studio.run) $("try-cards").replaceChildren();
    triedRun = Studio.run;
    $("try-status").textContent = Studio.run ? "" : "no trained model yet: train one in the Train tab";
  },
  hide: liveClose,
});

document.addEventListener("DOMContentLoaded", () => {
  $("try-files").addEventListener("change", (event) => {
    tryAll(event.target.files);
    event.target.value = "";
  });
  dropZone($("try-drop"), (items) => tryAll(items.map((item) => item.file)));
  $("live-open").addEventListener("click", liveOpen);
  $("live-close").addEventListener("click", liveClose);
});
